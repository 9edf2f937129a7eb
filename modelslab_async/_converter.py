"""
The one place that knows the wire format.

Requests become JSON bodies here (``"yes"``/``"no"`` flags, ``None`` fields omitted, local
images base64-encoded with ``base64: "yes"``), manifest lines in the API's own field names
become requests, and answers become :class:`ApiResponse`, tolerantly: ``message`` or
``messege``, ``id`` as int or string, ``output`` as a list or a string, numbers as strings.
The key is never part of these bodies: the client adds it per attempt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import functools
import math
import operator
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
from attrs import define, field
from cattrs.fns import identity
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import InvalidRequestError, ResponseFormatError
from ._models import Img2ImgRequest, SafetyCheckerType, Scheduler

__all__ = [
    "converter",
    "parse_response",
    "request_from_wire",
    "request_to_wire",
]

converter = cattrs.Converter()
# Optional plain values go on the wire as they are: the field is omitted when None, so the
# generated function writes the value itself instead of calling a hook per field.
_PLAIN_OPTIONALS = frozenset({str | None, int | None, float | None, float | str | None})
converter.register_unstructure_hook_func(lambda kind: kind in _PLAIN_OPTIONALS, identity)
converter.register_unstructure_hook(bool, lambda value: "yes" if value else "no")
for _kind in (Scheduler, SafetyCheckerType):
    converter.register_unstructure_hook(_kind, lambda member: member.value)

_unstructure_fields = make_dict_unstructure_fn(
    Img2ImgRequest,
    converter,
    _cattrs_omit_if_default=True,
    extra=override(omit=True),
    init_image=override(omit=True),
)


def request_to_wire(request: Img2ImgRequest) -> dict[str, Any]:
    """
    Return the JSON body of an img2img request, without the key.

    A local path is read here (blocking file I/O: call it off the event loop for paths).
    """
    body: dict[str, Any] = _unstructure_fields(request)
    image = request.init_image
    if isinstance(image, str):
        body["init_image"] = image
    else:
        data = image if isinstance(image, bytes) else image.read_bytes()
        body["init_image"] = base64.b64encode(data).decode("ascii")
        body["base64"] = "yes"
    if request.extra:
        body.update(request.extra)
    return body


converter.register_unstructure_hook(Img2ImgRequest, request_to_wire)


# --- manifest lines (wire names) -> requests -------------------------------------------------
#
# Each field's value is structured by its real annotation (from typing.get_type_hints) through a
# converter of its own, whose hooks accept what a JSON line can hold for that type and raise
# _BadValueError for anything else; request_from_wire turns that into InvalidRequestError naming the
# field, with the bad value quoted cut short.

_YES = frozenset({"yes", "true", "1"})
_NO = frozenset({"no", "false", "0"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_LARGEST_INT = 2**63  # seeds and sizes beyond this are typos (and overflow the API's ints)
_QUOTED = 40  # characters of a bad value shown in an error


class _BadValueError(ValueError):
    """A value a field's type cannot take; request_from_wire names the field."""

    def __init__(self, message: str, allowed: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.allowed = allowed


def _quote(value: Any) -> str:
    """A bad value for an error message: cut to a short prefix, never huge."""
    if isinstance(value, str):
        shown = repr(value[:_QUOTED])
        return shown if len(value) <= _QUOTED else f"{shown}... ({len(value)} chars)"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**_QUOTED else f"a {value.bit_length()}-bit integer"
    if isinstance(value, float):
        return repr(value)
    return f"a {'list' if isinstance(value, list) else type(value).__name__}"


def _to_bool(value: Any, _: Any = bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _YES | _NO:
        return value.strip().lower() in _YES
    raise _BadValueError(f"{_quote(value)} is not a flag", '"yes", "no", true, false')


def _to_int(value: Any, _: Any = int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None:
        raise _BadValueError(f"{_quote(value)} is not an integer")
    if not -_LARGEST_INT < number < _LARGEST_INT:
        raise _BadValueError(f"{_quote(value)} is too large")
    return number


def _to_float(value: Any, _: Any = float) -> float:
    if isinstance(value, bool):
        raise _BadValueError(f"{_quote(value)} is not a number")
    if isinstance(value, int):
        if not -_LARGEST_INT < value < _LARGEST_INT:
            raise _BadValueError(f"{_quote(value)} is too large")
        return float(value)
    if isinstance(value, float):
        return value  # the model's validator reports NaN, infinities and ranges
    if isinstance(value, str) and len(value) <= _QUOTED and _DECIMAL.fullmatch(value.strip()):
        return float(value.strip())
    raise _BadValueError(f"{_quote(value)} is not a number")


def _to_str(value: Any, _: Any = str) -> str:
    if isinstance(value, str):
        return value
    raise _BadValueError(f"must be a string, got {_quote(value)}")


def _to_enum(value: Any, kind: type[enum.StrEnum]) -> enum.StrEnum:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value.strip())
    raise _BadValueError(f"{_quote(value)} is not allowed", ", ".join(kind))


def _to_number_or_text(value: Any, _: Any = None) -> float | str:
    """``lora_strength``: one number, or comma-separated numbers as text."""
    return value if isinstance(value, str) else _to_float(value)


def _to_image_source(value: Any, _: Any = None) -> str:
    """``init_image`` in a wire body: a URL, a path or base64 text; bytes cannot be JSON."""
    return _to_str(value)


def _field_coercers() -> dict[str, Callable[[Any], Any]]:
    """Each request field's structuring function, from its real annotation (None stripped)."""
    values = cattrs.Converter()
    values.register_structure_hook(bool, _to_bool)
    values.register_structure_hook(int, _to_int)
    values.register_structure_hook(float, _to_float)
    values.register_structure_hook(str, _to_str)
    for kind in (Scheduler, SafetyCheckerType):  # before str, which they subclass
        values.register_structure_hook(kind, _to_enum)
    values.register_structure_hook_func(lambda kind: kind == float | str, _to_number_or_text)
    values.register_structure_hook_func(lambda kind: kind == str | bytes | Path, _to_image_source)
    hints = typing.get_type_hints(Img2ImgRequest)
    coercers: dict[str, Callable[[Any], Any]] = {}
    for attribute in attrs.fields(Img2ImgRequest):
        if attribute.name == "extra":
            continue
        kind = hints[attribute.name]
        members = tuple(m for m in typing.get_args(kind) if m is not type(None))
        if members and type(None) in typing.get_args(kind):  # X | None: None is skipped
            kind = functools.reduce(operator.or_, members)
        coercers[attribute.name] = functools.partial(values.structure, cl=kind)
    return coercers


_COERCERS = _field_coercers()


def request_from_wire(body: Mapping[str, Any]) -> Img2ImgRequest:
    """
    Build a request from a body in the API's own field names (a manifest line, say).

    Flags may be ``"yes"``/``"no"`` or booleans, numbers may be numeric strings, unknown fields
    go to ``extra``. With ``base64: "yes"`` the ``init_image`` string is decoded to bytes.

    Raises:
        InvalidRequestError: A field is missing or malformed or out of range (the error names
            it and quotes the value cut short), or the body holds a key. Nothing else.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError("request", f"must be an object, got {_quote(body)}")
    if "key" in body:
        raise InvalidRequestError(
            "key", "API keys do not belong in a request body", allowed="keys in the ServerPool"
        )
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    as_base64 = False
    for name, value in body.items():
        try:
            if name == "base64":
                as_base64 = _to_bool(value)
            elif name not in _COERCERS:
                extra[name] = value
            elif value is not None:
                kwargs[name] = _COERCERS[name](value)
        except _BadValueError as bad:
            raise InvalidRequestError(name, bad.message, allowed=bad.allowed) from None
    for required in ("model_id", "prompt", "init_image"):
        if required not in kwargs:
            raise InvalidRequestError(required, "is required")
    if as_base64:
        kwargs["init_image"] = _decode_image(kwargs["init_image"])
    elif not kwargs["init_image"].startswith(("http://", "https://")):
        kwargs["init_image"] = Path(kwargs["init_image"])
    return Img2ImgRequest(**kwargs, extra=extra)


def _decode_image(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            "init_image", "is not valid base64", allowed='base64 data when base64 is "yes"'
        ) from None


converter.register_structure_hook(Img2ImgRequest, lambda body, _: request_from_wire(body))


# --- answers -> ApiResponse -------------------------------------------------------------------


def _text_or_none(value: Any) -> str | None:
    kind = type(value)
    if kind is str:
        return value or None
    if value is None or kind is bool:
        return None if value is None else str(value).lower()
    if kind is float and value.is_integer():
        return str(int(value))
    return str(value) if value != "" else None


def _number(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or kind is bool or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _links(value: Any) -> tuple[str, ...]:
    kind = type(value)
    if kind is list or kind is tuple:
        for item in value:
            if type(item) is not str or not item:
                return tuple(item for item in value if isinstance(item, str) and item)
        return tuple(value)  # the common case: every item a URL
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple):
        return tuple(item for item in value if isinstance(item, str) and item)
    return ()


def _nsfw(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and value:
        return any(item is True for item in value)
    return None


@define(kw_only=True)
class ApiResponse:
    """
    An answer of the API, parsed tolerantly; internal (the client turns it into results).
    Not frozen: one is built for every call, and a frozen class costs twice as much to build.
    """

    status: str
    message: str | None = None
    id: str | None = None
    output: tuple[str, ...] = ()
    proxy_links: tuple[str, ...] = ()
    future_links: tuple[str, ...] = ()
    eta: float | None = None
    generation_time: float | None = None
    meta: Mapping[str, Any] = field(factory=dict)  # a fresh dict parsed from JSON, ours alone
    nsfw_content_detected: bool | None = None
    retry_after: float | None = None
    fetch_result: str | None = None


_LOWER_STATUSES = frozenset({"success", "processing", "error", "failed"})


def parse_response(body: Any, *, status_code: int = 200) -> ApiResponse:
    """
    Parse a decoded JSON answer tolerantly.

    Raises:
        ResponseFormatError: The body is not an object or has no ``status``.
    """
    if not isinstance(body, dict):
        raise ResponseFormatError(
            f"expected a JSON object, got {type(body).__name__}",
            status_code=status_code,
            snippet=repr(body)[:200],
        )
    status = body.get("status")
    if not isinstance(status, str) or not status:
        raise ResponseFormatError(
            "answer has no status", status_code=status_code, snippet=repr(body)[:200]
        )
    get = body.get
    meta = get("meta")
    message = get("message")
    if message is None:
        message = get("messege")  # a misspelling some answers carry
    answer_id = get("id")
    output = get("output")
    links = get("proxy_links")
    future = get("future_links")
    eta = get("eta")
    took = get("generationTime")
    if took is None:
        took = get("generation_time")
    nsfw = get("nsfw_content_detected")
    retry_after = get("retry_after")
    fetch_result = get("fetch_result")
    # Absent fields (the common case) cost no call: each helper runs only on a value.
    return ApiResponse(
        status=status if status in _LOWER_STATUSES else status.strip().lower(),
        message=None if message is None else _text_or_none(message),
        id=None if answer_id is None else _text_or_none(answer_id),
        output=() if output is None else _links(output),
        proxy_links=() if links is None else _links(links),
        future_links=() if future is None else _links(future),
        eta=None if eta is None else _number(eta),
        generation_time=None if took is None else _number(took),
        meta=meta if isinstance(meta, dict) else {},
        nsfw_content_detected=None if nsfw is None else _nsfw(nsfw),
        retry_after=None if retry_after is None else _number(retry_after),
        fetch_result=None if fetch_result is None else _text_or_none(fetch_result),
    )


converter.register_structure_hook(ApiResponse, lambda body, _: parse_response(body))
