"""Faults written as text (``serve --fault``) or JSON (the control endpoint), and back.

Text: ``KIND[@ROUTE][=RATE][,NAME=VALUE...]``, for example ``rate_limit=0.1``,
``server_error@server-2=0.05,status=503`` or ``busy,count=2``. RATE is the probability
(default 1); a text fault fires without limit unless ``count=N`` says otherwise. JSON: an object
of `Fault` fields (``{"kind": "busy", "count": 2}``); like `Fault` itself, it fires once unless
``count`` is given (``null`` for no limit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, get_args

import attrs

from ._faults import Fault, FaultEndpoint, FaultKind

__all__ = ["fault_from_json", "fault_from_text", "fault_to_json"]

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_UNLIMITED = frozenset({"none", "null", "unlimited"})


def _text_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _text_count(value: str) -> int | None:
    return None if value.lower() in _UNLIMITED else int(value)


def _text_route(value: str) -> str | None:
    return None if value.lower() in _UNLIMITED else value


# How each field other than ``kind`` is read from text.
_FROM_TEXT: dict[str, Callable[[str], Any]] = {
    "route": _text_route,
    "endpoint": str,
    "count": _text_count,
    "probability": float,
    "retry_after": float,
    "status": int,
    "delay": float,
    "message": str,
    "after_accept": _text_bool,
}
# The JSON types each field accepts (None where the field may be null).
_JSON_TYPES: dict[str, tuple[type | None, ...]] = {
    "kind": (str,),
    "route": (str, None),
    "endpoint": (str,),
    "count": (int, None),
    "probability": (int, float),
    "retry_after": (int, float),
    "status": (int,),
    "delay": (int, float),
    "message": (str,),
    "after_accept": (bool,),
}


def _build(fields: dict[str, Any]) -> Fault:
    for name, allowed in (("kind", get_args(FaultKind)), ("endpoint", get_args(FaultEndpoint))):
        if name in fields and fields[name] not in allowed:
            raise ValueError(f"unknown fault {name} {fields[name]!r}; known: {', '.join(allowed)}")
    try:
        return Fault(**fields)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def fault_from_text(text: str) -> Fault:
    """Parse ``KIND[@ROUTE][=RATE][,NAME=VALUE...]``.

    Raises:
        ValueError: The text is not a valid fault.
    """
    head, *options = [part.strip() for part in text.split(",")]
    head, _, rate = head.partition("=")
    kind, _, route = head.partition("@")
    fields: dict[str, Any] = {"kind": kind.strip(), "count": None}
    if route.strip():
        fields["route"] = route.strip()
    if rate.strip():
        fields["probability"] = float(rate)
    for option in options:
        name, sep, value = option.partition("=")
        reader = _FROM_TEXT.get(name.strip())
        if not sep or reader is None:
            known = ", ".join(_FROM_TEXT)
            raise ValueError(f"expected NAME=VALUE with NAME one of {known}, got {option!r}")
        fields[name.strip()] = reader(value.strip())
    return _build(fields)


def fault_from_json(data: Any) -> Fault:
    """Build a fault from a JSON object of its fields.

    Raises:
        ValueError: The object is not a valid fault.
    """
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError('send a JSON object with at least "kind"')
    for name, value in data.items():
        allowed = _JSON_TYPES.get(name)
        if allowed is None:
            raise ValueError(f"unknown fault field {name!r}; known: {', '.join(_JSON_TYPES)}")
        if value is None and None in allowed:
            continue
        types = tuple(kind for kind in allowed if kind is not None)
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            raise ValueError(f"fault field {name!r} has the wrong type: {value!r}")
    return _build(dict(data))


def fault_to_json(fault: Fault, remaining: int | None) -> dict[str, Any]:
    """Return a fault's fields and its remaining firings (None = unlimited) as JSON."""
    return {**attrs.asdict(fault), "remaining": remaining}
