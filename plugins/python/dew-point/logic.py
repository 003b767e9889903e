"""The dew-point operator's logic, in plain Python: no WebAssembly, no generated bindings.

`app.py` is the thin glue between these functions and the WIT contract; everything here works
on plain values and lists, so `python3 -m unittest` tests it natively.
"""

import json
import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

# Magnus coefficients over water (Sonntag 1990): good to about 0.35 °C from -45 to 60 °C.
MAGNUS_B = 17.62
MAGNUS_C = 243.12  # °C


class ConfigError(ValueError):
    """The step's config is wrong; the message says how (reported as the `config` error)."""


@dataclass(frozen=True)
class Config:
    temperature: str = "temp"
    humidity: str = "humidity"
    into: str = "dew_point"


def parse_config(text: str) -> Config:
    """Reads the step's config table, given as JSON ("" and "{}" mean all defaults)."""
    if not text.strip():
        text = "{}"
    try:
        table = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config is not valid JSON: {e}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"config must be a table, not {type(table).__name__}")
    known = Config.__dataclass_fields__
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; expected one of {', '.join(known)}"
        )
    for name, value in table.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key {name!r} must be a non-empty string, not {value!r}")
    config = Config(**table)
    if config.into in (config.temperature, config.humidity):
        raise ConfigError(f"into ({config.into!r}) would overwrite an input column")
    return config


def dew_point(temp_c: float, rh_percent: float) -> float:
    """Dew point in °C from air temperature (°C) and relative humidity (%), by Magnus."""
    gamma = math.log(rh_percent / 100.0) + MAGNUS_B * temp_c / (MAGNUS_C + temp_c)
    return MAGNUS_C * gamma / (MAGNUS_B - gamma)


def check(temp_c: float, rh_percent: float) -> Optional[str]:
    """Why an event with these readings cannot get a dew point, or None if it can."""
    if not 0.0 < rh_percent <= 100.0:  # also catches NaN
        return f"humidity {rh_percent} % is outside (0, 100]"
    if not math.isfinite(temp_c) or temp_c <= -MAGNUS_C:
        return f"temperature {temp_c} °C is outside the range of the Magnus formula"
    return None


def dew_points(
    temps: Sequence[Optional[float]], hums: Sequence[Optional[float]]
) -> Tuple[List[Optional[float]], List[Tuple[int, str]]]:
    """The dew-point column for events with these temperature and humidity columns.

    An event missing either value gets None. An event whose values are impossible gets None and
    an entry `(index, reason)` in the second list: it is to be rejected.
    """
    out: List[Optional[float]] = []
    rejected: List[Tuple[int, str]] = []
    for i, (t, rh) in enumerate(zip(temps, hums)):
        if t is None or rh is None:
            out.append(None)
            continue
        reason = check(t, rh)
        if reason is not None:
            rejected.append((i, reason))
            out.append(None)
        else:
            out.append(dew_point(t, rh))
    return out, rejected


def numeric(columns: Iterable[Tuple[str, str, Sequence]], name: str, n: int) -> List[Optional[float]]:
    """The readings of field `name` for `n` events, from columns given as (name, kind, values).

    Int columns count as numbers; text and flag columns do not (their events have no reading).
    weir stores a field whose type changes within a batch (60, then 60.5) under `name#int` or
    `name#float` beside `name`, so those columns are read too.
    """
    wanted = (name, name + "#float", name + "#int")
    found = [(kind, values) for col, kind, values in columns if col in wanted and kind in ("float", "int")]
    if len(found) == 1 and found[0][0] == "float":
        return list(found[0][1])
    out: List[Optional[float]] = [None] * n
    for _, values in found:
        for i, x in enumerate(values):
            if x is not None and out[i] is None:
                out[i] = float(x)
    return out


def take(values: Sequence, keep: Sequence[int]) -> list:
    """The entries of `values` at the indexes `keep`, in order (drops rejected events)."""
    return [values[i] for i in keep]
