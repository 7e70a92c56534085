"""JSON documents from callers: bounded, parsed safely, errors named.

Every JSON text a method takes (a bridges document, a VM profile, a state
document) goes through ``parse_json``: too big, too deep, a number Python
will not convert, NaN, a duplicate key -- each is one InvalidArgs naming the
problem, never an internal error. Pure: no I/O, usable by clients too.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from opdbus.errors import InvalidArgs

M = TypeVar("M", bound=BaseModel)
PROBLEMS_SHOWN = 10

# Well under the bus's 32 MiB message limit; a real host's documents are KBs.
DOCUMENT_MAX_BYTES = 4 * 1024 * 1024
# Deeper than any document op-dbus takes has reason to be.
DEPTH_MAX = 32


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _depth(text: str) -> int:
    """The deepest bracket nesting outside strings, found in one linear scan."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def check_size(text: str, what: str, max_bytes: int = DOCUMENT_MAX_BYTES) -> None:
    """InvalidArgs if ``text`` is more than ``max_bytes`` of UTF-8 (cheap: no copy when clear)."""
    if len(text) <= max_bytes // 4:
        return  # even 4 bytes a character would fit
    size = len(text) if len(text) > max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgs(f"{what}: the document is {size} bytes; at most {max_bytes} are accepted")


def parse_json(text: str, what: str, *, max_bytes: int = DOCUMENT_MAX_BYTES) -> Any:
    """``text`` as JSON, or InvalidArgs saying what is wrong with it."""
    check_size(text, what, max_bytes)
    # Before parsing: the C parser recurses, and a 10 000-deep array would
    # end in RecursionError halfway through.
    if (depth := _depth(text)) > DEPTH_MAX:
        raise InvalidArgs(f"{what}: nested {depth} levels deep; at most {DEPTH_MAX} are accepted")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InvalidArgs(f"{what}: not JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:
        # Integers past Python's digit limit, NaN/Infinity, duplicate keys.
        raise InvalidArgs(f"{what}: {e}") from None


def json_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as a JSON path: ``lxc.containers[2].bridge``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def problems(error: ValidationError) -> list[str]:
    """Every problem pydantic found, each as ``path: message``."""
    out = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        where = json_path(item["loc"])
        out.append(f"{where}: {message}" if where else message)
    return out


def check_document(model: type[M], data: Any, what: str) -> M:
    """``data`` as ``model``, or one InvalidArgs listing every problem with its JSON path."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        found = problems(e)
        shown = "; ".join(found[:PROBLEMS_SHOWN])
        more = len(found) - PROBLEMS_SHOWN
        raise InvalidArgs(f"{what}: {shown}" + (f"; and {more} more" if more > 0 else "")) from None
