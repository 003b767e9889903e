"""Typed config: the step's config table (JSON) read into the operator's dataclass fields.

Every dataclass field with `init=True` is a config key; a field with a default is optional.
Supported types: str, int, float (an int is accepted and widened), bool, Optional[T],
List[T], Dict[str, T], nested dataclasses and Any. Unknown keys, wrong types and missing keys
are errors, reported at load time as the contract's `config` error.
"""

import dataclasses
import json
import typing
from typing import Any, Type, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The step's config is wrong; the message says how (reported as the `config` error)."""


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _convert(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _convert(value, rest[0], where)
        for a in rest:
            try:
                return _convert(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"config key {where!r} has the wrong type: {value!r}")
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ConfigError(f"config key {where!r} must be a list, not {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r} must be a table, not {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r} must be a table, not {value!r}")
        return _build(kind, value, f"{where}.")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in _NAMES:
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        raise ConfigError(f"config key {where!r} must be {_NAMES[kind]}, not {value!r}")
    raise ConfigError(f"config key {where!r} has a type the config cannot hold: {kind!r}")


def _build(cls: Type[T], table: dict, prefix: str = "") -> T:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields]
    unknown = [k for k in table if k not in names]
    if unknown:
        expected = ", ".join(names) if names else "none (this operator takes no config)"
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; expected one of {expected}")
    values = {}
    for f in fields:
        if f.name in table:
            values[f.name] = _convert(table[f.name], hints.get(f.name, Any), prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key {prefix + f.name!r}")
    return cls(**values)


def parse_config(cls: Type[T], text: str) -> T:
    """An instance of the dataclass `cls` from the step's config, given as JSON ("" and "{}"
    mean no keys); then its `init()`, if it has one, which may raise ConfigError (or
    ValueError) to refuse the config."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a @dataclass: its fields are its config")
    try:
        table = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ConfigError(f"config is not valid JSON: {e}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"config must be a table, not {type(table).__name__}")
    op = _build(cls, table)
    init = getattr(op, "init", None)
    if init is not None:
        try:
            init()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return op
