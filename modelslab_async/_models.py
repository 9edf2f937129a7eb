"""
The values users build and get back: requests, results, attempts.

These classes hold Python types (bools, ints, enums) and know nothing of the wire: the
``"yes"``/``"no"`` flags, omitted ``None`` fields and the key live in ``_converter.py``.
Requests validate themselves when built, so bad input fails before anything is sent.
"""

from __future__ import annotations

import enum
import math
import os
import reprlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

from ._errors import InvalidRequestError

__all__ = [
    "ImageResult",
    "Img2ImgRequest",
    "JobStatus",
    "SafetyCheckerType",
    "Scheduler",
    "SystemDetails",
]


class Scheduler(enum.StrEnum):
    """The 18 schedulers the enterprise img2img endpoint accepts."""

    DDPM = "DDPMScheduler"
    DDIM = "DDIMScheduler"
    PNDM = "PNDMScheduler"
    LMS_DISCRETE = "LMSDiscreteScheduler"
    EULER_DISCRETE = "EulerDiscreteScheduler"
    EULER_ANCESTRAL_DISCRETE = "EulerAncestralDiscreteScheduler"
    DPM_SOLVER_MULTISTEP = "DPMSolverMultistepScheduler"
    HEUN_DISCRETE = "HeunDiscreteScheduler"
    KDPM2_DISCRETE = "KDPM2DiscreteScheduler"
    DPM_SOLVER_SINGLESTEP = "DPMSolverSinglestepScheduler"
    KDPM2_ANCESTRAL_DISCRETE = "KDPM2AncestralDiscreteScheduler"
    UNIPC_MULTISTEP = "UniPCMultistepScheduler"
    DDIM_INVERSE = "DDIMInverseScheduler"
    DEIS_MULTISTEP = "DEISMultistepScheduler"
    IPNDM = "IPNDMScheduler"
    KARRAS_VE = "KarrasVeScheduler"
    SCORE_SDE_VE = "ScoreSdeVeScheduler"
    LCM = "LCMScheduler"


class SafetyCheckerType(enum.StrEnum):
    """What the safety checker does to an image it flags."""

    BLUR = "blur"
    SENSITIVE_CONTENT_TEXT = "sensitive_content_text"
    PIXELATE = "pixelate"
    BLACK = "black"


STEPS_ALLOWED = (21, 31, 41)
ALGORITHM_TYPES = ("dpmsolver+++",)
MAX_SIDE = 1024

# Wire names the request owns; ``extra`` may not shadow them (nor smuggle a key in).
RESERVED_FIELDS = frozenset(
    {
        "key",
        "model_id",
        "prompt",
        "negative_prompt",
        "init_image",
        "width",
        "height",
        "samples",
        "num_inference_steps",
        "safety_checker",
        "safety_checker_type",
        "enhance_prompt",
        "guidance_scale",
        "strength",
        "scheduler",
        "clip_skip",
        "seed",
        "tomesd",
        "use_karras_sigmas",
        "algorithm_type",
        "vae",
        "lora_model",
        "lora_strength",
        "webhook",
        "track_id",
        "temp",
        "base64",
    }
)


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _fail(name: str, message: str, allowed: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(name, message, allowed=allowed)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def _shown(value: Any) -> str:
    """A bad value as a message quotes it: cut to a short prefix, whatever its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        return _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not replace the real error
        return f"<a {type(value).__name__}>"


# --- validators: each raises InvalidRequestError naming the field and what it accepts ---------


def _text(_: object, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _fail(attribute.name, f"must be a non-empty string, got {_shown(value)}")


def _optional_text(_: object, attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise _fail(attribute.name, f"must be a string or None, got {type(value).__name__}")


def _optional_bool(_: object, attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise _fail(attribute.name, f"must be True, False or None, got {_shown(value)}")


def _int_range(low: int, high: int, *, multiple_of: int = 1) -> Any:
    def check(_: object, attribute: Any, value: Any) -> None:
        if value is None:
            return
        allowed = f"integers {low}-{high}" + (
            f", multiples of {multiple_of}" if multiple_of > 1 else ""
        )
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(attribute.name, f"must be an integer, got {_shown(value)}", allowed)
        if not low <= value <= high or value % multiple_of:
            raise _fail(attribute.name, f"{_shown(value)} is out of range", allowed)

    return check


def _float_range(low: float, high: float) -> Any:
    def check(_: object, attribute: Any, value: Any) -> None:
        if value is None:
            return
        allowed = f"numbers from {low:g} to {high:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(attribute.name, f"must be a number, got {_shown(value)}", allowed)
        if not math.isfinite(value) or not low <= value <= high:
            raise _fail(attribute.name, f"{_shown(value)} is out of range", allowed)

    return check


def _one_of(values: tuple[Any, ...]) -> Any:
    def check(_: object, attribute: Any, value: Any) -> None:
        if value is not None and value not in values:
            raise _fail(
                attribute.name, f"{_shown(value)} is not allowed", ", ".join(map(str, values))
            )

    return check


def _enum(kind: type[enum.StrEnum], value: Any) -> Any:
    if not isinstance(value, str) or isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        return value  # the validator reports it, with the field name


def _to_scheduler(value: Any) -> Any:
    return _enum(Scheduler, value)


def _to_safety_checker_type(value: Any) -> Any:
    return _enum(SafetyCheckerType, value)


def _optional_url(_: object, attribute: Any, value: Any) -> None:
    if value is not None and not (isinstance(value, str) and _is_http_url(value)):
        raise _fail(attribute.name, f"must be an http(s) URL, got {_shown(value)}")


def _seed(_: object, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(attribute.name, f"must be a non-negative integer or None, got {_shown(value)}")


def _lora_strength(_: object, attribute: Any, value: Any) -> None:
    if value is None:
        return
    parts: list[Any] = value.split(",") if isinstance(value, str) else [value]
    for part in parts:
        try:
            number = float(part) if not isinstance(part, bool) else math.nan
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not 0.1 <= number <= 1.0:
            raise _fail(
                attribute.name,
                f"{_shown(value)} is not allowed",
                "a number from 0.1 to 1, or comma-separated numbers for several LoRAs",
            )


def _init_image(value: Any) -> Any:
    """Normalise ``init_image``: URLs stay strings, existing local paths become ``Path``."""
    if isinstance(value, str) and not _is_http_url(value) and os.path.isfile(value):
        return Path(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def _check_init_image(_: object, attribute: Any, value: Any) -> None:
    allowed = "an http(s) URL, the path of an existing local file, or the image bytes"
    if isinstance(value, str) and _is_http_url(value):
        return
    if isinstance(value, Path):
        if not value.is_file():
            raise _fail(attribute.name, f"file not found: {value}", allowed)
        return
    if isinstance(value, bytes) and value:
        return
    raise _fail(attribute.name, f"{_shown(value)} is not usable", allowed)


def _extra(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if type(value) is MappingProxyType:
        return value  # already read-only (the client wraps what it parsed for this job alone)
    return MappingProxyType(dict(value or {}))


def _check_extra(_: object, attribute: Any, value: Mapping[str, Any]) -> None:
    clash = sorted(name for name in value if name in RESERVED_FIELDS)
    if clash:
        raise _fail(
            attribute.name,
            f"may not set {', '.join(clash)}",
            "fields the request does not model yet; use the request's own fields for the rest",
        )


@frozen(kw_only=True)
class Img2ImgRequest:
    """
    One enterprise img2img job, validated when built.

    ``init_image`` is an http(s) URL, a local file path, or the image bytes; a local image is
    sent base64-encoded (``base64: "yes"``). Optional fields left as ``None`` are not sent, so
    the server's defaults apply. ``extra`` carries fields the API adds later, sent verbatim.

    Raises:
        InvalidRequestError: A field is missing or out of range; the error names it.
    """

    model_id: str = field(validator=_text)
    prompt: str = field(validator=_text)
    init_image: str | bytes | Path = field(converter=_init_image, validator=_check_init_image)
    negative_prompt: str | None = field(default=None, validator=_optional_text)
    width: int | None = field(default=None, validator=_int_range(8, MAX_SIDE, multiple_of=8))
    height: int | None = field(default=None, validator=_int_range(8, MAX_SIDE, multiple_of=8))
    samples: int | None = field(default=None, validator=_int_range(1, 4))
    num_inference_steps: int | None = field(default=None, validator=_one_of(STEPS_ALLOWED))
    safety_checker: bool | None = field(default=None, validator=_optional_bool)
    safety_checker_type: SafetyCheckerType | None = field(
        default=None,
        converter=_to_safety_checker_type,
        validator=_one_of(tuple(SafetyCheckerType)),
    )
    enhance_prompt: bool | None = field(default=None, validator=_optional_bool)
    guidance_scale: float | None = field(default=None, validator=_float_range(1, 20))
    strength: float | None = field(default=None, validator=_float_range(0, 1))
    scheduler: Scheduler | None = field(
        default=None, converter=_to_scheduler, validator=_one_of(tuple(Scheduler))
    )
    clip_skip: int | None = field(default=None, validator=_int_range(1, 8))
    seed: int | None = field(default=None, validator=_seed)
    tomesd: bool | None = field(default=None, validator=_optional_bool)
    use_karras_sigmas: bool | None = field(default=None, validator=_optional_bool)
    algorithm_type: str | None = field(default=None, validator=_one_of(ALGORITHM_TYPES))
    vae: str | None = field(default=None, validator=_optional_text)
    lora_model: str | None = field(default=None, validator=_optional_text)
    lora_strength: float | str | None = field(default=None, validator=_lora_strength)
    webhook: str | None = field(default=None, validator=_optional_url)
    track_id: str | None = field(default=None, validator=_optional_text)
    temp: bool | None = field(default=None, validator=_optional_bool)
    extra: Mapping[str, Any] = field(factory=dict, converter=_extra, validator=_check_extra)

    def __repr__(self) -> str:
        image = self.init_image
        shown = f"<{len(image)} bytes>" if isinstance(image, bytes) else repr(str(image))
        return (
            f"Img2ImgRequest(model_id={self.model_id!r}, prompt={self.prompt[:40]!r}, "
            f"init_image={shown})"
        )


@frozen(kw_only=True)
class ImageResult:
    """
    A finished img2img job.

    Attributes:
        id: The job's id on the server (a string, whatever type the server sent).
        output: URLs of the generated images.
        proxy_links: Alternative URLs, when the server sends them.
        generation_time: Seconds the server says it spent, if it said.
        meta: The server's echo of the parameters it used.
        nsfw_content_detected: The safety checker's verdict, if reported.
        server: Name of the server (or route) that ran the job.
        attempts: How many submit attempts it took.
        elapsed: Seconds from the first attempt to the result.
        possible_duplicate: True when an earlier attempt may also have run the job.
        track_id: The job's ``track_id``, sent with every submit and echoed in webhooks.
    """

    id: str | None
    output: tuple[str, ...]
    proxy_links: tuple[str, ...] = ()
    generation_time: float | None = None
    meta: Mapping[str, Any] = field(factory=dict, converter=_extra)
    nsfw_content_detected: bool | None = None
    server: str = ""
    attempts: int = 1
    elapsed: float = 0.0
    possible_duplicate: bool = False
    track_id: str | None = None


@frozen(kw_only=True)
class JobStatus:
    """
    One look at a queued job: finished (with its result) or still processing.

    Attributes:
        request_id: The job's id.
        done: True when ``result`` holds the finished job.
        eta: The server's estimate of seconds left, while processing.
        result: The finished job, when done.
    """

    request_id: str
    done: bool
    eta: float | None = None
    result: ImageResult | None = None


@frozen(kw_only=True)
class SystemDetails:
    """
    What an enterprise server reports about itself (``system_details``).

    Attributes:
        server: Name of the server asked.
        status: The server's status word (``"ok"`` when healthy).
        queue_time: Seconds of work queued on the server, if reported.
        model_count: Models loaded, if reported.
        raw: The whole answer, for fields the docs do not list.
    """

    server: str
    status: str
    queue_time: float | None = None
    model_count: int | None = None
    raw: Mapping[str, Any] = field(factory=dict, converter=_extra)
