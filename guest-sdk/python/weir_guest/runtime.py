"""One call per batch in, one call per event to the operator: the loops behind the component's
exports, on plain values (keys as texts, columns as `(name, kind, values)`). The test harness
runs exactly this code, so native tests see what the component does.
"""

import json
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from . import Context, Event, Message, Reject, StateStore
from .columns import Column, field_problem, kind_of, to_columns, to_rows


class BadInput(Exception):
    """The batch as a whole cannot be processed (the contract's `bad-input` error)."""


@dataclass
class Batch:
    """Events by column: per event a key and a time, and the columns."""

    keys: List[str] = field(default_factory=list)
    ts_ms: List[int] = field(default_factory=list)
    columns: List[Column] = field(default_factory=list)


def events_of(batch: Batch) -> List[Event]:
    """The batch's events, by the typing rule."""
    n = len(batch.keys)
    if len(batch.ts_ms) != n:
        raise BadInput(f"batch has {n} keys but {len(batch.ts_ms)} timestamps")
    try:
        rows = to_rows(batch.columns, n)
    except ValueError as e:
        raise BadInput(str(e)) from None
    return [Event(k, t, f) for k, t, f in zip(batch.keys, batch.ts_ms, rows)]


def batch_of(events: Sequence[Event]) -> Batch:
    """Events (already checked by `problem`) as a batch, by the typing rule."""
    try:
        columns = to_columns([e.fields for e in events])
    except ValueError as e:
        raise BadInput(str(e)) from None
    return Batch([e.key for e in events], [e.ts_ms for e in events], columns)


def problem(event: Any) -> Optional[str]:
    """Why an emitted event cannot go on, or None if it can."""
    if not isinstance(event, Event):
        return f"emitted a {type(event).__name__}, not an Event"
    if not isinstance(event.key, str):
        return f"an event's key must be a text, not {event.key!r}"
    if isinstance(event.ts_ms, bool) or not isinstance(event.ts_ms, int):
        return f"an event's ts_ms must be an int, not {event.ts_ms!r}"
    for name, value in event.fields.items():
        if value is not None:
            reason = field_problem(name, value)
            if reason is not None:
                return reason
    return None


def _each(call, inputs, ctx: Context) -> Tuple[List[Event], List[Tuple[int, str]]]:
    """Calls `call(input, ctx)` for each input; collects what each emits or why it failed."""
    out: List[Event] = []
    rejected: List[Tuple[int, str]] = []
    for index, item in enumerate(inputs):
        ctx.emitted = []
        try:
            result = call(item, ctx)
        except Reject as r:
            result = r
        if isinstance(result, Reject):
            rejected.append((index, result.reason))
            continue
        reason = next(filter(None, map(problem, ctx.emitted)), None)
        if reason is not None:
            rejected.append((index, reason))
            continue
        out.extend(ctx.emitted)
    ctx.emitted = []
    return out, rejected


def transform(op: Any, batch: Batch, store: StateStore) -> Tuple[Batch, List[Tuple[int, str]]]:
    """Runs a transformer's `process` over a batch."""
    events, rejected = _each(op.process, events_of(batch), Context(store))
    return batch_of(events), rejected


def decode(op: Any, messages: Sequence[Message], store: StateStore) -> Tuple[Batch, List[Tuple[int, str]]]:
    """Runs a decoder's `decode` over a batch of messages."""
    events, rejected = _each(op.decode, messages, Context(store))
    return batch_of(events), rejected


def write_acc(acc: Any) -> bytes:
    """An accumulator as stored by weir: JSON."""
    return json.dumps(acc, separators=(",", ":"), ensure_ascii=False).encode()


def read_acc(op: Any, raw: bytes) -> Any:
    if not raw:
        return op.create()
    try:
        return json.loads(bytes(raw))
    except ValueError as e:
        raise BadInput(f"accumulator does not decode: {e}") from None


def create(op: Any) -> bytes:
    return write_acc(op.create())


def add(op: Any, accumulators: Sequence[bytes], batch: Batch, group: Sequence[int]) -> List[bytes]:
    """Adds each event to the accumulator of its group."""
    accs = [read_acc(op, a) for a in accumulators]
    events = events_of(batch)
    if len(group) != len(events):
        raise BadInput(f"{len(group)} group indexes for {len(events)} events")
    for event, g in zip(events, group):
        if g >= len(accs):
            raise BadInput(f"group {g} is out of range ({len(accs)} accumulators)")
        updated = op.add(accs[g], event)
        if updated is not None:
            accs[g] = updated
    return [write_acc(a) for a in accs]


def merge(op: Any, a: bytes, b: bytes) -> bytes:
    acc = read_acc(op, a)
    merged = op.merge(acc, read_acc(op, b))
    return write_acc(acc if merged is None else merged)


def finish(op: Any, accumulators: Sequence[bytes]) -> List[List[Tuple[str, Any]]]:
    """Each accumulator's result as (name, value) pairs."""
    results = []
    for raw in accumulators:
        result = op.finish(read_acc(op, raw))
        pairs = list(result.items()) if isinstance(result, dict) else list(result)
        for name, value in pairs:
            if kind_of(value) is None:
                raise BadInput(f"finish gave {name!r} = {value!r}: not a float, int, text or flag")
        results.append(pairs)
    return results
