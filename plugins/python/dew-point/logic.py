"""dew-point: adds the dew point (°C, Magnus formula) to events with a temperature and humidity."""
import math
from dataclasses import dataclass

from weir_guest import ConfigError, Level, Reject, log


@dataclass
class DewPoint:
    temperature: str = "temp"
    humidity: str = "humidity"
    into: str = "dew_point"
    B, C = 17.62, 243.12  # Magnus coefficients over water (Sonntag 1990): ±0.35 °C from -45 to 60 °C

    def init(self):
        if "" in vars(self).values() or self.into in (self.temperature, self.humidity):
            raise ConfigError(f"names must be non-empty, and into must not name an input: {vars(self)}")
        log(Level.INFO, f"dew-point ready: temp={self.temperature}, humidity={self.humidity}, into={self.into}")

    def process(self, event, ctx):
        t, rh, B, C = event.number(self.temperature), event.number(self.humidity), self.B, self.C
        event.fields.pop(self.into, None)
        if t is not None and rh is not None:
            if not 0.0 < rh <= 100.0:  # also catches NaN
                raise Reject(f"humidity {rh} % is outside (0, 100]")
            if not math.isfinite(t) or t <= -C:
                raise Reject(f"temperature {t} °C is outside the range of the Magnus formula")
            gamma = math.log(rh / 100.0) + B * t / (C + t)
            event[self.into] = C * gamma / (B - gamma)
        ctx.emit(event)
