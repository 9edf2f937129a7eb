"""The documented response variants, picked per answer from a seeded generator.

The docs show the same answer in several shapes (spec section 2): ``message`` or the legacy
``messege``, ``id`` as an int or a string, a processing ``output`` of ``[]`` or ``""``, a
``fetch_result`` on a v6 URL with another id, errors under HTTP 200 or a real 4xx, and more.
Without a seed the fake keeps its normal shapes. With one, each answer draws one value of every
`VARIANTS` axis that applies to it from ``random.Random(seed)``, so the same requests in the
same order get the same shapes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["VARIANTS", "AnswerKind", "Variants", "shape"]

AnswerKind = Literal[
    "success", "processing", "fetch", "failed", "request_error", "error", "schedulers"
]

#: Every variant axis and the values it can take.
VARIANTS: dict[str, tuple[str, ...]] = {
    "message_key": ("messege", "message"),
    "id_type": ("int", "str"),
    "processing_output": ("list", "empty_string"),
    "processing_form": ("v6", "quickstart"),
    "fetch_result": ("enterprise", "v6_other_id", "absent"),
    "proxy_links": ("list", "empty_string", "absent"),
    "meta_safety_key": ("safetychecker", "safety_checker"),
    "error_http": ("200", "400"),
    "schedulers": ("all", "documented_17"),
}

# Which axes apply to which answer, in draw order.
_AXES: dict[AnswerKind, tuple[str, ...]] = {
    "success": ("id_type", "proxy_links", "meta_safety_key"),
    "processing": (
        "processing_form",
        "message_key",
        "id_type",
        "processing_output",
        "fetch_result",
    ),
    "fetch": ("message_key", "id_type", "processing_output", "proxy_links"),
    "failed": ("message_key", "id_type"),
    "request_error": ("message_key", "error_http"),
    "error": ("message_key",),
    "schedulers": ("schedulers",),
}

# The docs' processing example: its fetch_result id (134701497) is not its id (134711525).
_V6_ID_OFFSET = 10028
_QUICKSTART_MESSAGE = "Your request is being processed"


class Variants:
    """Draws the shape of each answer; without a seed nothing is drawn."""

    __slots__ = ("_rng", "seed")

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._rng = random.Random(seed) if seed is not None else None

    def __bool__(self) -> bool:
        return self._rng is not None

    def draw(self, kind: AnswerKind) -> dict[str, str]:
        """Return the chosen value of each axis that applies to an answer of ``kind``."""
        rng = self._rng
        if rng is None:
            return {}
        return {axis: rng.choice(VARIANTS[axis]) for axis in _AXES[kind]}


def _message_key(body: dict[str, Any], value: str) -> None:
    for key in ("message", "messege"):
        if key in body:
            body[value] = body.pop(key)
            return


def _id_type(body: dict[str, Any], value: str) -> None:
    if isinstance(body.get("id"), int) and value == "str":
        body["id"] = str(body["id"])


def _processing_output(body: dict[str, Any], value: str) -> None:
    if body.get("status") == "processing" and value == "empty_string":
        body["output"] = ""


def _processing_form(body: dict[str, Any], value: str) -> None:
    if value == "quickstart":
        kept = {"status": "processing", "id": body["id"], "eta": body["eta"]}
        body.clear()
        body.update(kept, message=_QUICKSTART_MESSAGE)


def _fetch_result(body: dict[str, Any], value: str) -> None:
    if "fetch_result" not in body:
        return
    if value == "absent":
        del body["fetch_result"]
    elif value == "v6_other_id":
        other = int(body["id"]) - _V6_ID_OFFSET
        body["fetch_result"] = f"https://modelslab.com/api/v6/images/fetch/{other}"


def _proxy_links(body: dict[str, Any], value: str) -> None:
    if "proxy_links" not in body:
        return
    if value == "absent":
        del body["proxy_links"]
    elif value == "empty_string":
        body["proxy_links"] = ""


def _meta_safety_key(body: dict[str, Any], value: str) -> None:
    meta = body.get("meta")
    if value == "safety_checker" and isinstance(meta, dict) and "safetychecker" in meta:
        meta["safety_checker"] = meta.pop("safetychecker")


def _schedulers(body: dict[str, Any], value: str) -> None:
    if value == "documented_17":
        body["schedulers"] = [name for name in body["schedulers"] if name != "LCMScheduler"]


_SHAPERS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "processing_form": _processing_form,
    "message_key": _message_key,
    "id_type": _id_type,
    "processing_output": _processing_output,
    "fetch_result": _fetch_result,
    "proxy_links": _proxy_links,
    "meta_safety_key": _meta_safety_key,
    "schedulers": _schedulers,
}


def shape(body: dict[str, Any], status: int, chosen: dict[str, str]) -> int:
    """Reshape ``body`` in place as ``chosen`` says and return the HTTP status to answer."""
    for axis, value in chosen.items():
        shaper = _SHAPERS.get(axis)
        if shaper is not None:
            shaper(body, value)
    if chosen.get("error_http") == "400" and status == 200:
        return 400
    return status
