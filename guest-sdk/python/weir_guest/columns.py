"""The column typing rule, both ways: columns (the contract's `batch`) to events, events to columns.

The rule (stated once in the WIT docs, `wit/weir-operator.wit`, and kept by weir, the Rust SDK
and this package):

1. A column holds values of one kind: float, int, text or flag.
2. Ints and floats of one field share one column: it is `int` while all its values are ints and
   `float` (ints widened) as soon as one value is a float.
3. A field whose values in one batch are of different families (number / text / flag) keeps the
   family seen first under its plain name; each other family goes into a column `name#kind`
   (`rh#text`, `rh#flag`, `rh#int`, `rh#float`). Nothing is dropped; no event is refused.
4. Field names ending in `#float`, `#int`, `#text` or `#flag` are reserved for this.
5. A value of a column `base#kind` (whose values really are of that kind) appears in its event
   under `base`, unless the event already has a value under `base`.

A column here is a tuple `(name, kind, values)`: kind one of "float", "int", "text", "flag";
values one entry per event, None where the event has no value. Fields within an event come in
column order.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

Column = Tuple[str, str, List[Any]]

KINDS = ("float", "int", "text", "flag")
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def kind_of(value: Any) -> Optional[str]:
    """The column kind a value belongs to, or None if no column can hold it."""
    if isinstance(value, bool):
        return "flag"
    if isinstance(value, int):
        return "int" if INT_MIN <= value <= INT_MAX else None
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "text"
    return None


def _family(kind: str) -> str:
    return "number" if kind in ("int", "float") else kind


def _reserved(name: str) -> Optional[Tuple[str, str]]:
    """(base, kind) if `name` is `base#kind` with one of the four kinds."""
    base, sep, kind = name.rpartition("#")
    return (base, kind) if sep and base and kind in KINDS else None


def field_problem(name: str, value: Any) -> Optional[str]:
    """Why a field cannot go into a column, or None if it can."""
    if not isinstance(name, str):
        return f"field name {name!r} is not a text"
    kind = kind_of(value)
    if kind is None:
        if isinstance(value, int):
            return f"field {name!r}: {value} does not fit in a 64-bit int"
        return f"field {name!r}: a {type(value).__name__} is not a float, int, text or flag"
    reserved = _reserved(name)
    if reserved is not None and reserved[1] != kind:
        return (
            f"field name {name!r} is reserved for {reserved[1]} values of {reserved[0]!r} "
            "(names ending in #float, #int, #text or #flag are)"
        )
    return None


def to_columns(rows: Sequence[Dict[str, Any]]) -> List[Column]:
    """The columns of events given by their fields, in order. Fields must pass
    `field_problem`; a None value counts as absent."""
    n = len(rows)
    first: Dict[str, str] = {}  # field -> the family kept under its plain name
    # (base, family, suffixed) -> [values, holds a float]
    slots: Dict[Tuple[str, str, bool], list] = {}
    for i, fields in enumerate(rows):
        for name, value in fields.items():
            if value is None:
                continue
            family = _family(kind_of(value))
            reserved = _reserved(name)
            if reserved is not None:
                slot = (reserved[0], family, True)
            else:
                slot = (name, family, first.setdefault(name, family) != family)
            entry = slots.get(slot)
            if entry is None:
                entry = slots[slot] = [[None] * n, False]
            elif entry[0][i] is not None:
                raise ValueError(
                    f"event {i} has two {family} values for {slot[0]!r} outside its plain "
                    f"column (one under the reserved name {name!r})"
                )
            entry[0][i] = value
            if isinstance(value, float):
                entry[1] = True
    columns: List[Column] = []
    for (base, family, suffixed), (values, has_float) in slots.items():
        kind = family
        if family == "number":
            kind = "float" if has_float else "int"
            if has_float:
                values = [None if x is None else float(x) for x in values]
        columns.append((f"{base}#{kind}" if suffixed else base, kind, values))
    return columns


def to_rows(columns: Sequence[Column], n: int) -> List[Dict[str, Any]]:
    """The fields of each of `n` events stored in `columns`. Raises ValueError for a column
    whose length is not `n`."""
    plain: List[Tuple[str, Sequence[Any]]] = []
    renamed: List[Tuple[str, str, Sequence[Any]]] = []  # (name, base, values), in column order
    order: List[Tuple[str, Optional[str], Sequence[Any]]] = []
    for name, kind, values in columns:
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} events")
        reserved = _reserved(name)
        base = reserved[0] if reserved is not None and reserved[1] == kind else None
        order.append((name, base, values))
        if base is None:
            plain.append((name, values))
        else:
            renamed.append((name, base, values))
    rows: List[Dict[str, Any]] = []
    for i in range(n):
        fields: Dict[str, Any] = {}
        if not renamed:
            for name, values in plain:
                if values[i] is not None:
                    fields[name] = values[i]
        else:
            taken = {name for name, values in plain if values[i] is not None}
            for name, base, values in order:
                value = values[i]
                if value is None:
                    continue
                if base is not None and base not in taken:
                    taken.add(base)
                    fields[base] = value
                else:
                    fields[name] = value
        rows.append(fields)
    return rows
