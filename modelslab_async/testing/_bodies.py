"""The bodies the fake answers, shaped like the documented examples (spec section 2)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ._faults import Fault
from ._jobs import Job
from ._validation import as_flag, as_integer, as_number

__all__ = [
    "INSUFFICIENT_CREDITS",
    "PROCESSING_MESSEGE",
    "UNAVAILABLE",
    "UNFETCHABLE_IMAGE",
    "error",
    "failed_body",
    "fault_response",
    "fetch_body",
    "gateway_page",
    "json_response",
    "meta_for",
    "processing_body",
    "rate_limited",
    "success_body",
]

PROCESSING_MESSEGE = "Try to fetch request after seconds estimated"
_TIP = (
    "Get 20x faster image generation using enterprise plan. "
    "Click here : https://modelslab.com/enterprise"
)
_TIP_1 = (
    "Your image is processing in background, you can get this image using fetch API: "
    "here is link for fetch api : https://docs.modelslab.com/enterprise-api/text-to-image/"
    "fetch-queue-image"
)
_RATE_LIMITED = "Rate limit exceeded. Maximum {limit} queued requests allowed."
_DOCS_QUEUE_LIMIT = 5
UNFETCHABLE_IMAGE = "Unable to fetch image from provided URL"
INSUFFICIENT_CREDITS = "Insufficient credits"
_INTERNAL = "Internal server error. Please try again."
UNAVAILABLE = "Service temporarily unavailable. Please try again later."
_TRUNCATED = b'{"status": "success", "output": ['
_HTML = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_KEPT_CHARS = 64


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return a JSON response."""
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def rate_limited(limit: int, retry_after: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the documented queue-limit body and its ``Retry-After`` header."""
    number: float = int(retry_after) if float(retry_after).is_integer() else retry_after
    body = {
        "status": "error",
        "message": _RATE_LIMITED.format(limit=limit),
        "retry_after": number,
    }
    return body, {"Retry-After": str(math.ceil(retry_after))}


def error(message: str, status: int = 200) -> web.Response:
    """Return ``{"status": "error", "message": message}``."""
    return json_response({"status": "error", "message": message}, status)


def gateway_page(status: int) -> web.Response:
    """Return the HTML page a gateway shows when the server behind it is dead (502/504)."""
    return web.Response(
        text=_HTML.format(status=status, reason=_reason(status)),
        status=status,
        content_type="text/html",
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def fault_response(fault: Fault) -> web.Response:
    """Return the answer of a fault that replaces the normal answer (not drop or slow)."""
    kind = fault.kind
    if kind == "rate_limit":
        body, headers = rate_limited(_DOCS_QUEUE_LIMIT, fault.retry_after)
        return json_response(body, 429, headers)
    if kind == "server_error":
        status = fault.status
        if status in (502, 504):
            return gateway_page(status)
        if status == 500:
            return error(_INTERNAL, 500)
        if status == 503:
            return error(UNAVAILABLE, 503)
        return error(_reason(status), status)
    if kind == "malformed":
        return web.Response(body=_TRUNCATED, content_type="application/json")
    if kind == "error_200":
        return json_response({"status": "error", "messege": fault.message})
    return json_response(
        {"status": "processing", "messege": "try again later.", "output": "", "tip": _TIP}
    )


def meta_for(body: Mapping[str, Any], seed: int, file_prefix: str, job_id: int) -> dict[str, Any]:
    """Return the ``meta`` object echoing an accepted request."""
    init_image = body["init_image"]
    if as_flag(body.get("base64")) and len(init_image) > _KEPT_CHARS:
        init_image = init_image[:_KEPT_CHARS]

    def text(name: str, default: str) -> Any:
        value = body.get(name)
        return default if value is None else value

    def integer(name: str, default: int) -> int:
        value = as_integer(body.get(name))
        return default if value is None else value

    def number(name: str, default: float) -> float:
        value = as_number(body.get(name))
        return default if value is None else value

    return {
        "prompt": body["prompt"],
        "model_id": body["model_id"],
        "scheduler": text("scheduler", "UniPCMultistepScheduler"),
        "safetychecker": text("safety_checker", "yes"),
        "safety_checker_type": text("safety_checker_type", "sensitive_content_text"),
        "negative_prompt": text("negative_prompt", ""),
        "W": integer("width", 512),
        "H": integer("height", 512),
        "guidance_scale": number("guidance_scale", 7.5),
        "init_image": init_image,
        "steps": integer("num_inference_steps", 21),
        "n_samples": integer("samples", 1),
        "strength": number("strength", 0.7),
        "clip_skip": integer("clip_skip", 1),
        "enhance_prompt": text("enhance_prompt", "yes"),
        "tomesd": text("tomesd", "yes"),
        "use_karras_sigmas": text("use_karras_sigmas", "yes"),
        "algorithm_type": text("algorithm_type", ""),
        "lora": body.get("lora_model"),
        "lora_strength": body.get("lora_strength"),
        "vae": body.get("vae"),
        "base64": text("base64", "no"),
        "temp": text("temp", "no"),
        "webhook": body.get("webhook"),
        "track_id": body.get("track_id"),
        "seed": seed,
        "full_url": "no",
        "upscale": "no",
        "outdir": "out",
        "file_prefix": file_prefix,
        "id": str(job_id),
    }


def success_body(job: Job, urls: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Return the submit answer of a job that finished while the request was held."""
    return {
        "status": "success",
        "generationTime": round(job.finish - job.start, 4),
        "id": job.id,
        "output": urls,
        "proxy_links": list(urls),
        "nsfw_content_detected": False,
        "webhook_status": "",
        "tip": _TIP,
        "meta": meta,
    }


def processing_body(
    job: Job, urls: list[str], meta: dict[str, Any], eta: float, base_url: str
) -> dict[str, Any]:
    """Return the submit answer of a job queued for later: fetch it after ``eta`` seconds."""
    meta["output"] = list(urls)
    return {
        "status": "processing",
        "tip": _TIP,
        "tip_1": _TIP_1,
        "eta": round(eta, 2),
        "messege": PROCESSING_MESSEGE,
        "webhook_status": "",
        "fetch_result": f"{base_url}/fetch/{job.id}",
        "id": job.id,
        "output": [],
        "meta": meta,
        "future_links": urls,
    }


def failed_body(job: Job) -> dict[str, Any]:
    """Return the answer for a job that ended failed (the webhook docs' ``failed`` form)."""
    return {"status": "failed", "id": job.id, "message": job.failure}


def fetch_body(job: Job, urls: list[str], now: float) -> dict[str, Any]:
    """Return the fetch answer for ``job`` at loop time ``now``."""
    if job.failure is not None and job.is_done(now):
        return failed_body(job)
    if job.is_done(now):
        return {"status": "success", "id": job.id, "output": urls, "proxy_links": list(urls)}
    return {
        "status": "processing",
        "id": job.id,
        "eta": round(job.finish - now, 2),
        "messege": PROCESSING_MESSEGE,
        "output": [],
        "future_links": urls,
    }
