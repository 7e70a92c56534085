"""D-Bus values <-> plain Python values and pydantic models."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from dbus_fast import Variant
from pydantic import BaseModel, ValidationError

from opdbus.errors import InvalidArgs
from opdbus.models.document import check_document, json_path

M = TypeVar("M", bound=BaseModel)

_INTS = frozenset("ynqiuxt")


def plain(value: Any) -> Any:
    """Unwrap variants recursively into JSON-able Python values."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _accepted(annotation: Any) -> tuple[frozenset[str], str]:
    """Signatures a model field accepts, and how to name that type to a person."""
    origin = get_origin(annotation)
    if origin is Annotated:  # constrained types: the constraint is pydantic's, the type ours
        return _accepted(get_args(annotation)[0])
    if origin is Literal:
        kinds = {type(value) for value in get_args(annotation)}
        if len(kinds) == 1:
            return _accepted(kinds.pop())
        return frozenset(), "one of the allowed values"
    if origin in (Union, types.UnionType):
        accepted: set[str] = set()
        labels = []
        for arg in get_args(annotation):
            if arg is type(None):
                continue
            sigs, label = _accepted(arg)
            accepted |= sigs
            labels.append(label)
        return frozenset(accepted), " or ".join(labels)
    if origin is list:
        (inner,) = get_args(annotation) or (str,)
        inner_sigs, noun, sig = _scalar(inner)
        return frozenset(f"a{s}" for s in inner_sigs), f"a list of {noun}s (a{sig})"
    if origin is dict:
        return frozenset({"a{ss}", "a{sv}"}), "a dictionary (a{ss})"
    sigs, noun, sig = _scalar(annotation)
    return sigs, f"{'an' if noun[0] in 'aeiou' else 'a'} {noun} ({sig})"


def _scalar(annotation: Any) -> tuple[frozenset[str], str, str]:
    """(accepted signatures, noun, the signature to suggest) of a scalar type."""
    if get_origin(annotation) is Annotated:
        return _scalar(get_args(annotation)[0])
    if annotation is bool:
        return frozenset("b"), "boolean", "b"
    if annotation is int:
        return _INTS, "integer", "u"
    if annotation is float:
        return _INTS | {"d"}, "number", "d"
    if isinstance(annotation, type) and issubclass(annotation, str):
        return frozenset({"s", "o"}), "string", "s"
    return frozenset(), "value", "v"


def decode_options(model: type[M], options: dict[str, Variant], what: str, **given: Any) -> M:
    """Check an a{sv} against a model: unknown keys, D-Bus types, then values.

    ``given`` are the method's plain arguments that belong in the same model
    (a name, a list of addresses), validated with it.
    """
    fields = model.model_fields
    values: dict[str, Any] = {}
    for key, variant in options.items():
        field = fields.get(key)
        if field is None:
            valid = ", ".join(sorted(fields)) or "none"
            raise InvalidArgs(f"unknown option '{key}' for {what}; valid options: {valid}")
        accepted, label = _accepted(field.annotation)
        if not accepted:
            # Structured fields (a bridge's ports) come in documents, not a{sv}:
            # nothing reaches pydantic without its D-Bus type checked.
            raise InvalidArgs(f"'{key}' cannot be given as an option of {what}")
        if variant.signature not in accepted:
            raise InvalidArgs(
                f"option '{key}' of {what} must be {label}, not D-Bus type '{variant.signature}'"
            )
        if key in given:
            raise InvalidArgs(f"option '{key}' of {what} is an argument of its own, not an option")
        values[key] = plain(variant)
    values.update(given)
    return validate(model, values, what, label="option", arguments=set(given))


def validate(
    model: type[M], data: Any, what: str, *, label: str = "", arguments: set[str] | None = None
) -> M:
    """pydantic validation whose failure is one InvalidArgs naming the field(s).

    With a ``label`` (options, arguments) the first problem is named as that
    kind of thing; a document (no label) gets every problem with its JSON path.
    """
    if not label:
        return check_document(model, data, what)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = json_path(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        if not where:
            raise InvalidArgs(f"{what}: {message}") from None
        if arguments and first["loc"] and first["loc"][0] in arguments:
            label = "argument"
        raise InvalidArgs(f"{label} '{where}' of {what}: {message}") from None
