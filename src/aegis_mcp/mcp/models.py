"""MCP output models built from the typed records the jobs return (pool/store.py,
netmon/summary.py): each record is declared once, with its descriptions, and what an MCP
client sees of it is made from that declaration."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import UnionType
from typing import Annotated, Any, NotRequired, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, Field, create_model


def output_model(record: type, omit: Collection[str] = (), optional: Collection[str] = (),
                 nested: Mapping[type, type[BaseModel]] | None = None) -> type[BaseModel]:
    """The pydantic model of a TypedDict record, for a tool's output schema: the record's
    fields in its order, the string in a field's Annotated as its description. Keys the record
    marks NotRequired, and `optional` ones, default to None (not required in the schema);
    `omit` leaves keys out (the model ignores them in what it validates); `nested` swaps a
    record, alone, optional or inside a list, for its model, so that it keeps its
    descriptions too."""
    fields: dict[str, Any] = {}
    for key, hint in get_type_hints(record, include_extras=True).items():
        if key in omit:
            continue
        # Python 3.11 computes __required_keys__ before postponed annotations are evaluated,
        # so it misses a NotRequired: the evaluated hint is the one to trust.
        required = key in record.__required_keys__ and key not in optional
        if get_origin(hint) is NotRequired:
            hint, required = get_args(hint)[0], False
        annotation, *extras = get_args(hint) if get_origin(hint) is Annotated else (hint,)
        if nested:
            annotation = _swap(annotation, nested)
        default = ... if required else None
        if default is None:
            annotation = annotation | None
        descriptions = [extra for extra in extras if isinstance(extra, str)]
        fields[key] = (annotation, Field(default, description=descriptions[0])
                       if descriptions else default)
    return create_model(record.__name__, **fields)


def _swap(annotation: Any, nested: Mapping[type, type[BaseModel]]) -> Any:
    """`annotation` with each record of `nested` in it (`R`, `R | None`, `list[R]`) made its
    model: pydantic cannot take a typing.TypedDict on Python 3.11, and a record's model keeps
    its descriptions."""
    if annotation in nested:
        return nested[annotation]
    args = get_args(annotation)
    if get_origin(annotation) is list and args and args[0] in nested:
        return list[nested[args[0]]]  # type: ignore[misc]
    if args and any(a in nested for a in args) and get_origin(annotation) in (Union, UnionType):
        return Union[tuple(nested.get(a, a) for a in args)]  # noqa: UP007
    return annotation
