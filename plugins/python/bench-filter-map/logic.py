"""bench-filter-map: the operator `weir bench` runs, in Python. It keeps events whose `value`
lies in [min, max] and maps it to `value * scale + offset` (by default °C to °F), as
plugins/bench-filter-map does in Rust, event by event."""
from dataclasses import dataclass


@dataclass
class BenchFilterMap:
    min: float = -1000.0
    max: float = 1000.0
    scale: float = 1.8
    offset: float = 32.0

    def process(self, event, ctx):
        x = event.number("value")
        if x is not None and self.min <= x <= self.max:
            event["value"] = x * self.scale + self.offset
            ctx.emit(event)
