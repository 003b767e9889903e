"""The glue to the WIT contract (`weir:operator@0.2.0`), for use inside a component built by
componentize-py: one function per world returns the class componentize-py exports.

A plugin's `app.py` is then, for a transformer (world `transformer`):

    from weir_guest.component import export_transform
    from logic import MyOperator

    Transform = export_transform(MyOperator)

and likewise `Decode = export_decode(...)` (world `decoder`) and
`Aggregate = export_aggregate(...)` (world `aggregator`). The generated bindings (`wit_world`)
are imported only when these functions run, so nothing else in this package needs them.
"""

from typing import Any, Callable, Dict, Type

import weir_guest

from . import ConfigError, Level, Message, parse_config, runtime

REFUSED_KEY = 4294967295


class _Bindings:
    """What the generated bindings offer, looked up once."""

    def __init__(self, with_state: bool):
        from componentize_py_types import Err
        from wit_world.imports import keys, log, types

        self.Err, self.keys, self.types = Err, keys, types
        self.values = {
            "float": types.Values_Float,
            "int": types.Values_Int,
            "text": types.Values_Text,
            "flag": types.Values_Flag,
        }
        self.kinds = {cls: kind for kind, cls in self.values.items()}
        self.scalars = {
            "float": types.Value_Float,
            "int": types.Value_Int,
            "text": types.Value_Text,
            "flag": types.Value_Flag,
        }
        levels = {level: getattr(log.Level, level.name) for level in Level}
        weir_guest._log_sink = lambda level, message: log.log(levels[level], message)
        # Key ids are stable for the life of an instance (see the contract's `keys`).
        self.names: Dict[int, str] = {}
        self.ids: Dict[str, int] = {}
        self.store = _HostState(self) if with_state else None

    def name(self, key_id: int) -> str:
        name = self.names.get(key_id)
        if name is None:
            name = self.names[key_id] = self.keys.name(key_id)
            self.ids[name] = key_id
        return name

    def id(self, name: str) -> int:
        key_id = self.ids.get(name)
        if key_id is None:
            key_id = self.keys.id(name)
            if key_id != REFUSED_KEY:
                self.ids[name] = key_id
                self.names[key_id] = name
        return key_id

    def batch_in(self, batch: Any) -> runtime.Batch:
        columns = [(c.name, self.kinds[type(c.values)], c.values.value) for c in batch.columns]
        return runtime.Batch([self.name(k) for k in batch.key], batch.ts_ms, columns)

    def batch_out(self, batch: runtime.Batch) -> Any:
        t = self.types
        columns = [t.Column(name, self.values[kind](values)) for name, kind, values in batch.columns]
        return t.Batch([self.id(k) for k in batch.keys], batch.ts_ms, columns)

    def output(self, result) -> Any:
        batch, rejected = result
        t = self.types
        return t.Output(self.batch_out(batch), [t.Rejected(i, reason) for i, reason in rejected])

    def call(self, f: Callable[[], Any]) -> Any:
        """Runs `f`, turning failures into the contract's errors."""
        t = self.types
        try:
            return f()
        except ConfigError as e:
            raise self.Err(t.Error_Config(str(e)))
        except runtime.BadInput as e:
            raise self.Err(t.Error_BadInput(str(e)))
        except self.Err:
            raise
        except Exception as e:  # a bug in the operator: the whole batch fails
            raise self.Err(t.Error_Internal(f"{type(e).__name__}: {e}"))


class _HostState:
    """Keyed state in weir, through the contract's `state` interface."""

    def __init__(self, bindings: _Bindings):
        from wit_world.imports import state

        self.state, self.bindings = state, bindings

    def get(self, key: str, name: str):
        return self.state.get(self.bindings.id(key), name)

    def set(self, key: str, name: str, value: bytes) -> None:
        self.state.set(self.bindings.id(key), name, value)

    def remove(self, key: str, name: str) -> None:
        self.state.remove(self.bindings.id(key), name)


class _Slot:
    """The configured operator of this instance (one instance serves one pipeline step)."""

    def __init__(self, cls: Type, bindings: _Bindings):
        self.cls, self.b, self.op = cls, bindings, None

    def init(self, config: str) -> None:
        self.op = self.b.call(lambda: parse_config(self.cls, config))

    def get(self) -> Any:
        if self.op is None:
            raise self.b.Err(self.b.types.Error_Internal("called before init"))
        return self.op


def export_transform(cls: Type) -> Type:
    """The class to export as `Transform` (world `transformer`) for an operator with `process`."""
    from wit_world import exports

    b = _Bindings(with_state=True)
    slot = _Slot(cls, b)

    class Transform(exports.Transform):
        def init(self, config: str) -> None:
            slot.init(config)

        def transform(self, events: Any) -> Any:
            op = slot.get()
            return b.call(lambda: b.output(runtime.transform(op, b.batch_in(events), b.store)))

    return Transform


def export_decode(cls: Type) -> Type:
    """The class to export as `Decode` (world `decoder`) for an operator with `decode`."""
    from wit_world import exports

    b = _Bindings(with_state=True)
    slot = _Slot(cls, b)

    class Decode(exports.Decode):
        def init(self, config: str) -> None:
            slot.init(config)

        def decode(self, messages: Any) -> Any:
            op = slot.get()
            plain = [Message(m.topic, bytes(m.payload), m.received_ms) for m in messages]
            return b.call(lambda: b.output(runtime.decode(op, plain, b.store)))

    return Decode


def export_aggregate(cls: Type) -> Type:
    """The class to export as `Aggregate` (world `aggregator`) for an operator with `create`,
    `add`, `merge` and `finish`."""
    from wit_world import exports

    b = _Bindings(with_state=False)
    slot = _Slot(cls, b)

    class Aggregate(exports.Aggregate):
        def init(self, config: str) -> None:
            slot.init(config)

        def create(self) -> bytes:
            return b.call(lambda: runtime.create(slot.get()))

        def add(self, accumulators: Any, events: Any, group: Any) -> Any:
            op = slot.get()
            return b.call(lambda: runtime.add(op, accumulators, b.batch_in(events), group))

        def merge(self, a: bytes, c: bytes) -> bytes:
            op = slot.get()
            return b.call(lambda: runtime.merge(op, a, c))

        def finish(self, accumulators: Any) -> Any:
            op = slot.get()
            t = b.types
            return b.call(
                lambda: [
                    [t.Field(name, b.scalars[runtime.kind_of(v)](v)) for name, v in pairs]
                    for pairs in runtime.finish(op, accumulators)
                ]
            )

    return Aggregate
