"""Write weir operators in plain Python.

An operator is a class whose dataclass fields are its config; weir fills them from the step's
config table when it loads the plugin. A transformer implements `process(event, ctx)`:

    from dataclasses import dataclass
    from weir_guest import Reject

    @dataclass
    class RangeFilter:
        field: str
        min: float
        max: float

        def process(self, event, ctx):
            x = event.number(self.field)
            if x is None or self.min <= x <= self.max:
                ctx.emit(event)

A decoder implements `decode(message, ctx)`; an aggregator `create()`, `add(acc, event)`,
`merge(acc, other)` and `finish(acc)`. `raise Reject(reason)` (or `return Reject(reason)`) sends
the one input to the dead-letter output; any other exception fails the whole batch.

`weir_guest.component` binds an operator to the WIT contract inside a component (built with
componentize-py); `weir_guest.testing.Harness` runs it natively, in plain `python3 -m unittest`.
"""

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .config import ConfigError, parse_config

__all__ = [
    "ConfigError",
    "Context",
    "Event",
    "KeyState",
    "Level",
    "Message",
    "Reject",
    "Value",
    "log",
    "parse_config",
]

__version__ = "0.2.0"

#: A field's value: a float, an int, a text or a flag.
Value = Union[float, int, str, bool]


class Reject(Exception):
    """Sends the one event (or message) being handled to the dead-letter output with a reason.

    Raise it, or return it, from `process` or `decode`: the rest of the batch carries on.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Event:
    """One event: its key (a sensor id, a location, ...), its event time and its fields."""

    key: str
    ts_ms: int
    fields: Dict[str, Value] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of field `name`, or `default`."""
        return self.fields.get(name, default)

    def number(self, name: str) -> Optional[float]:
        """Field `name` as a float if it is a number (int or float); None if absent or not one."""
        value = self.fields.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    def text(self, name: str) -> Optional[str]:
        """Field `name` if it is a text; None otherwise."""
        value = self.fields.get(name)
        return value if isinstance(value, str) else None

    def flag(self, name: str) -> Optional[bool]:
        """Field `name` if it is a flag; None otherwise."""
        value = self.fields.get(name)
        return value if isinstance(value, bool) else None

    def __getitem__(self, name: str) -> Value:
        return self.fields[name]

    def __setitem__(self, name: str, value: Value) -> None:
        self.fields[name] = value

    def __delitem__(self, name: str) -> None:
        del self.fields[name]

    def __contains__(self, name: str) -> bool:
        return name in self.fields


@dataclass
class Message:
    """One raw message as it arrived, for decoders."""

    topic: str
    payload: bytes
    received_ms: int = 0


class Level(Enum):
    """Log levels, as weir's log knows them."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


# Where log lines go: weir's log inside a component (set by `component`), a list in the harness.
_log_sink: Callable[[Level, str], None] = lambda level, message: None


def log(level: Union[Level, str], message: str) -> None:
    """Writes a line to weir's log, tagged with the operator's name. Works in `init` too."""
    _log_sink(Level(level), message)


def _state_bytes(value: Any) -> bytes:
    # The Rust SDK's format (serde_json): compact, UTF-8, so other languages read it back.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class KeyState:
    """The state weir keeps for one key: it survives restarts, crashes and hot swaps, and is
    rolled back with a batch that fails. Values are stored as JSON."""

    def __init__(self, store: "StateStore", key: str):
        self._store = store
        self._key = key

    def get(self, name: str, default: Any = None) -> Any:
        """The value stored under `name`; `default` if none, or if it is not JSON."""
        raw = self._store.get(self._key, name)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError:
            return default

    def set(self, name: str, value: Any) -> None:
        """Stores `value` (anything JSON can hold) under `name`."""
        self._store.set(self._key, name, _state_bytes(value))

    def remove(self, name: str) -> None:
        """Removes what is stored under `name`."""
        self._store.remove(self._key, name)

    def get_bytes(self, name: str) -> Optional[bytes]:
        """The raw bytes stored under `name`."""
        return self._store.get(self._key, name)

    def set_bytes(self, name: str, value: bytes) -> None:
        """Stores raw bytes under `name`."""
        self._store.set(self._key, name, bytes(value))


class StateStore:
    """Keyed state in memory (the harness); `component` puts weir's `state` interface behind
    the same three methods."""

    def __init__(self) -> None:
        self.values: Dict[Tuple[str, str], bytes] = {}

    def get(self, key: str, name: str) -> Optional[bytes]:
        return self.values.get((key, name))

    def set(self, key: str, name: str, value: bytes) -> None:
        self.values[(key, name)] = value

    def remove(self, key: str, name: str) -> None:
        self.values.pop((key, name), None)


class Context:
    """Passed to an operator for each input: collects what it emits and gives access to keyed
    state and the log."""

    def __init__(self, store: StateStore):
        self.emitted: List[Event] = []
        self._store = store

    def emit(self, event: Event) -> None:
        """Sends `event` on to the next step: once to pass it through (map), not at all to drop
        it (filter), or several times (flat-map, a detector's alerts)."""
        self.emitted.append(event)

    def state(self, key: str) -> KeyState:
        """The keyed state weir keeps for `key` (usually `event.key`)."""
        return KeyState(self._store, key)

    def log(self, level: Union[Level, str], message: str) -> None:
        """Writes a line to weir's log, tagged with this operator's name."""
        log(level, message)
