"""Run an operator natively, in plain `python3 -m unittest`, through the same batch conversion
(the typing rule) and the same loops the component uses, with keyed state in memory.

    from weir_guest import Event
    from weir_guest.testing import Harness

    op = Harness.transform(RangeFilter, {"field": "humidity", "min": 0, "max": 100})
    out = op.run([Event("s1", 0, {"humidity": 55.0}), Event("s1", 1, {"humidity": 140.0})])
    assert len(out.events) == 1
"""

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import weir_guest

from . import Event, Level, Message, StateStore, parse_config, runtime

Config = Union[None, str, Dict[str, Any]]


@dataclass
class Outcome:
    """What one batch produced."""

    #: Events emitted, in order (read back through the typing rule).
    events: List[Event] = field(default_factory=list)
    #: Inputs sent to the dead-letter output: their index in the batch, and why.
    rejected: List[Tuple[int, str]] = field(default_factory=list)
    #: Log lines written while processing the batch.
    logs: List[Tuple[Level, str]] = field(default_factory=list)


class Harness:
    """An operator configured as a pipeline step would configure it (config as a dict, or as
    the JSON weir passes), with keyed state in memory."""

    def __init__(self, cls: Type, config: Config):
        self.logs: List[Tuple[Level, str]] = []
        self.store = StateStore()
        text = json.dumps(config) if isinstance(config, dict) else (config or "")
        with self._logging(self.logs):
            #: The operator itself.
            self.operator = parse_config(cls, text)

    @classmethod
    def transform(cls, op: Type, config: Config = None) -> "Harness":
        """Configures a transformer; a bad config raises `weir_guest.ConfigError`."""
        return cls(op, config)

    decoder = transform
    aggregator = transform

    def _logging(self, into: List[Tuple[Level, str]]):
        harness = self

        class Capture:
            def __enter__(self):
                self.before = weir_guest._log_sink
                weir_guest._log_sink = lambda level, message: into.append((level, message))
                return harness

            def __exit__(self, *exc):
                weir_guest._log_sink = self.before

        return Capture()

    def run(self, events: Sequence[Event]) -> Outcome:
        """Runs one batch of events through the transformer."""
        out = Outcome()
        with self._logging(out.logs):
            batch, out.rejected = runtime.transform(
                self.operator, runtime.batch_of(list(events)), self.store
            )
        out.events = runtime.events_of(batch)
        return out

    def decode(self, messages: Sequence[Message]) -> Outcome:
        """Decodes one batch of messages."""
        out = Outcome()
        with self._logging(out.logs):
            batch, out.rejected = runtime.decode(self.operator, list(messages), self.store)
        out.events = runtime.events_of(batch)
        return out

    def aggregate(self, events: Sequence[Event]) -> List[Tuple[str, Any]]:
        """Aggregates `events` as one window: creates an accumulator, adds them, finishes."""
        return self._finish(self._accumulate(events))

    def aggregate_merged(self, a: Sequence[Event], b: Sequence[Event]) -> List[Tuple[str, Any]]:
        """Aggregates two parts of a window separately and merges them, as session windows do."""
        merged = runtime.merge(self.operator, self._accumulate(a), self._accumulate(b))
        return self._finish(merged)

    def _accumulate(self, events: Sequence[Event]) -> bytes:
        with self._logging(self.logs):
            batch = runtime.batch_of(list(events))
            acc = runtime.create(self.operator)
            return runtime.add(self.operator, [acc], batch, [0] * len(events))[0]

    def _finish(self, acc: bytes) -> List[Tuple[str, Any]]:
        with self._logging(self.logs):
            return runtime.finish(self.operator, [acc])[0]

    def state(self, key: str, name: str) -> Optional[bytes]:
        """The raw bytes stored for `key` under `name` (JSON, as the component stores it)."""
        return self.store.get(key, name)

    def set_state(self, key: str, name: str, value: bytes) -> None:
        """Stores raw bytes for `key` under `name`, as an earlier batch or version would have."""
        self.store.set(key, name, value)
