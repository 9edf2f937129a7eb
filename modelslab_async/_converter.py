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
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import InvalidRequestError, ResponseFormatError
from ._models import ApiResponse, Img2ImgRequest, SafetyCheckerType, Scheduler

__all__ = [
    "converter",
    "parse_response",
    "request_from_wire",
    "request_to_wire",
]

converter = cattrs.Converter()
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
    body.update(request.extra)
    return body


converter.register_unstructure_hook(Img2ImgRequest, request_to_wire)


# --- manifest lines (wire names) -> requests -------------------------------------------------

_YES = frozenset({"yes", "true", "1"})
_NO = frozenset({"no", "false", "0"})


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _YES | _NO:
        return value.strip().lower() in _YES
    raise InvalidRequestError(name, f"{value!r} is not a flag", allowed='"yes", "no", true, false')


def _to_int(name: str, value: Any) -> Any:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # the model's validator names the field and the range


def _to_float(name: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def _field_coercers() -> dict[str, Callable[[str, Any], Any]]:
    coercers: dict[str, Callable[[str, Any], Any]] = {}
    for attribute in attrs.fields(Img2ImgRequest):
        kind = str(attribute.type)
        if kind == "bool | None":
            coercers[attribute.name] = _to_bool
        elif kind == "int | None":
            coercers[attribute.name] = _to_int
        elif kind == "float | None":
            coercers[attribute.name] = _to_float
    return coercers


_COERCERS = _field_coercers()
_REQUEST_FIELDS = frozenset(a.name for a in attrs.fields(Img2ImgRequest)) - {"extra"}


def request_from_wire(body: Mapping[str, Any]) -> Img2ImgRequest:
    """
    Build a request from a body in the API's own field names (a manifest line, say).

    Flags may be ``"yes"``/``"no"`` or booleans, numbers may be numeric strings, unknown fields
    go to ``extra``. With ``base64: "yes"`` the ``init_image`` string is decoded to bytes.

    Raises:
        InvalidRequestError: A field is missing, malformed or out of range, or the body holds a key.
    """
    if "key" in body:
        raise InvalidRequestError(
            "key", "API keys do not belong in a request body", allowed="keys in the ServerPool"
        )
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    as_base64 = False
    for name, value in body.items():
        if name == "base64":
            as_base64 = _to_bool(name, value)
        elif name not in _REQUEST_FIELDS:
            extra[name] = value
        elif value is not None:
            coerce = _COERCERS.get(name)
            kwargs[name] = coerce(name, value) if coerce else value
    for required in ("model_id", "prompt", "init_image"):
        if required not in kwargs:
            raise InvalidRequestError(required, "is required")
    if as_base64:
        kwargs["init_image"] = _decode_image(kwargs["init_image"])
    elif isinstance(kwargs["init_image"], str) and not kwargs["init_image"].startswith(
        ("http://", "https://")
    ):
        kwargs["init_image"] = Path(kwargs["init_image"])
    return Img2ImgRequest(**kwargs, extra=extra)


def _decode_image(value: Any) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidRequestError(
            "init_image", "is not valid base64", allowed='base64 data when base64 is "yes"'
        ) from None


converter.register_structure_hook(Img2ImgRequest, lambda body, _: request_from_wire(body))


# --- answers -> ApiResponse -------------------------------------------------------------------


def _text_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _links(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple):
        return tuple(item for item in value if isinstance(item, str) and item)
    return ()


def _nsfw(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and value:
        return any(item is True for item in value)
    return None


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
    meta = body.get("meta")
    message = body.get("message", body.get("messege"))
    return ApiResponse(
        status=status.strip().lower(),
        message=_text_or_none(message),
        id=_text_or_none(body.get("id")),
        output=_links(body.get("output")),
        proxy_links=_links(body.get("proxy_links")),
        future_links=_links(body.get("future_links")),
        eta=_number(body.get("eta")),
        generation_time=_number(body.get("generationTime", body.get("generation_time"))),
        meta=meta if isinstance(meta, dict) else {},
        nsfw_content_detected=_nsfw(body.get("nsfw_content_detected")),
        retry_after=_number(body.get("retry_after")),
        fetch_result=_text_or_none(body.get("fetch_result")),
    )


converter.register_structure_hook(ApiResponse, lambda body, _: parse_response(body))
