"""The request checks of the enterprise img2img endpoint, with Laravel-style messages.

The rules and their order follow the documented limits (spec sections 1 and 2): the first
failing rule gives the message, answered as HTTP 200 with ``{"status": "error", ...}``.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ALGORITHM_TYPES",
    "IP_ADAPTER_IDS",
    "SAFETY_CHECKER_TYPES",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "STEPS",
    "YES_NO_FLAGS",
    "as_flag",
    "as_integer",
    "as_number",
    "validate_submit",
]

#: The 18 documented schedulers, in the docs' order.
SCHEDULER_NAMES = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "UniPCMultistepScheduler",
    "DDIMInverseScheduler",
    "DEISMultistepScheduler",
    "IPNDMScheduler",
    "KarrasVeScheduler",
    "ScoreSdeVeScheduler",
    "LCMScheduler",
)
SCHEDULERS = frozenset(SCHEDULER_NAMES)
SAFETY_CHECKER_TYPES = frozenset({"blur", "sensitive_content_text", "pixelate", "black"})
ALGORITHM_TYPES = frozenset({"dpmsolver+++"})
IP_ADAPTER_IDS = frozenset(
    {
        "ip-adapter_sdxl",
        "ip-adapter_sd15",
        "ip-adapter-plus-face_sd15",
        "ip-adapter-plus_sdxl_vit-h",
        "ip-adapter-plus-face_sdxl_vit-h",
    }
)
STEPS = frozenset({21, 31, 41})
YES_NO_FLAGS = (
    "safety_checker",
    "enhance_prompt",
    "tomesd",
    "use_karras_sigmas",
    "base64",
    "temp",
    "loadbalancer",
)
_REQUIRED = ("model_id", "prompt", "init_image")
_TEXT_FIELDS = ("negative_prompt", "vae", "lora_model", "track_id")
_URL_FIELDS = ("webhook", "ip_adapter_image")
# The docs write "yes"/"no"; any case and true/false (as the realtime API sends) are accepted.
_YES = frozenset({"yes", "true", "1"})
_NO = frozenset({"no", "false", "0"})
_MAX_SIDE = 1024
_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,")


def _label(field: str) -> str:
    return field.replace("_", " ")


def as_number(value: Any) -> float | None:
    """Return ``value`` as a float if it is a JSON number or a numeric string, else None."""
    if isinstance(value, bool):
        return None
    numeric = isinstance(value, int | float) or (isinstance(value, str) and _NUMERIC.match(value))
    if not numeric:
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def as_flag(value: Any) -> bool | None:
    """Return a yes/no flag as a bool (``"yes"``, ``"YES"``, ``"true"``, true...), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _YES:
            return True
        if lowered in _NO:
            return False
    return None


def as_integer(value: Any) -> int | None:
    """Return ``value`` as an int if it is a whole number (or such a string), else None."""
    number = as_number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _check_side(field: str, value: Any) -> str | None:
    number = as_number(value)
    label = _label(field)
    if number is None:
        return f"The {label} must be a number."
    if number > _MAX_SIDE:
        return f"The {label} may not be greater than {_MAX_SIDE}."
    if number < 8:
        return f"The {label} must be at least 8."
    if number % 8:
        return f"The {label} must be divisible by 8."
    return None


def _check_range(field: str, value: Any, *, low: float, high: float, integer: bool) -> str | None:
    number = as_number(value)
    label = _label(field)
    if number is None:
        return f"The {label} must be a number."
    if integer and not number.is_integer():
        return f"The {label} must be an integer."
    if not low <= number <= high:
        return f"The {label} must be between {low:g} and {high:g}."
    return None


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        return False
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def _check_init_image(value: str, base64_flag: Any) -> str | None:
    if as_flag(base64_flag):
        data = _DATA_URI.sub("", value, count=1)
        try:
            decoded = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        return None if decoded else "The init image must be a valid base64 string."
    return None if _is_url(value) else "The init image must be a valid URL."


def _check_steps(value: Any) -> str | None:
    if as_integer(value) in STEPS:
        return None
    return "The selected num inference steps is invalid."


def _check_in(field: str, value: Any, allowed: frozenset[str]) -> str | None:
    if isinstance(value, str) and value in allowed:
        return None
    return f"The selected {_label(field)} is invalid."


def _check_flag(field: str, value: Any) -> str | None:
    return None if as_flag(value) is not None else f"The selected {_label(field)} is invalid."


def _check_text(field: str, value: Any) -> str | None:
    return None if isinstance(value, str) else f"The {_label(field)} must be a string."


def _check_url(field: str, value: Any) -> str | None:
    return None if _is_url(value) else f"The {_label(field)} must be a valid URL."


def _check_lora_strength(value: Any) -> str | None:
    parts = value.split(",") if isinstance(value, str) else [value]
    for part in parts:
        number = as_number(part)
        if number is None or not 0.1 <= number <= 1:
            return "The lora strength must be between 0.1 and 1."
    return None


def _check_seed(value: Any) -> str | None:
    seed = as_integer(value)
    return None if seed is not None and seed >= 0 else "The seed must be an integer."


_Check = Callable[[Any], str | None]
_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("width", partial(_check_side, "width")),
    ("height", partial(_check_side, "height")),
    ("samples", partial(_check_range, "samples", low=1, high=4, integer=True)),
    ("num_inference_steps", _check_steps),
    ("guidance_scale", partial(_check_range, "guidance_scale", low=1, high=20, integer=False)),
    ("strength", partial(_check_range, "strength", low=0, high=1, integer=False)),
    ("clip_skip", partial(_check_range, "clip_skip", low=1, high=8, integer=True)),
    ("scheduler", partial(_check_in, "scheduler", allowed=SCHEDULERS)),
    (
        "safety_checker_type",
        partial(_check_in, "safety_checker_type", allowed=SAFETY_CHECKER_TYPES),
    ),
    ("algorithm_type", partial(_check_in, "algorithm_type", allowed=ALGORITHM_TYPES)),
    ("lora_strength", _check_lora_strength),
    ("ip_adapter_id", partial(_check_in, "ip_adapter_id", allowed=IP_ADAPTER_IDS)),
    ("ip_adapter_scale", partial(_check_range, "ip_adapter_scale", low=0, high=1, integer=False)),
    *((flag, partial(_check_flag, flag)) for flag in YES_NO_FLAGS),
    *((field, partial(_check_text, field)) for field in _TEXT_FIELDS),
    *((field, partial(_check_url, field)) for field in _URL_FIELDS),
)


def validate_submit(body: Mapping[str, Any]) -> str | None:
    """Check an img2img request body the way the enterprise API does.

    Args:
        body: The decoded JSON body (the ``key`` has already been checked).

    Returns:
        The message of the first failing rule, or None when the body is acceptable.
    """
    for field in _REQUIRED:
        value = body.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"The {_label(field)} field is required."
        if not isinstance(value, str):
            return f"The {_label(field)} must be a string."
    for field, check in _CHECKS:
        value = body.get(field)
        if value is not None and (message := check(value)) is not None:
            return message
    message = _check_init_image(body["init_image"], body.get("base64"))
    if message is None and body.get("seed") is not None:
        message = _check_seed(body["seed"])
    return message
