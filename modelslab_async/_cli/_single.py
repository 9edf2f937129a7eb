"""The ``img2img`` command: one job, its progress on stderr, its result as JSON on stdout."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO

from .. import ImageResult, Img2ImgRequest, JobEvent, ModelsLabError
from ._download import Downloader, DownloadResult
from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ._fetch import SafeFetcher, download_policy
from ._interrupt import run_interruptibly
from ._settings import Settings
from ._shared import shared_backend
from ._text import short

__all__ = ["REQUEST_OPTIONS", "request_from_args", "run_img2img"]

#: Command-line option -> request field, for the optional fields.
REQUEST_OPTIONS = {
    "negative_prompt": "negative_prompt",
    "strength": "strength",
    "width": "width",
    "height": "height",
    "samples": "samples",
    "steps": "num_inference_steps",
    "seed": "seed",
    "guidance_scale": "guidance_scale",
    "scheduler": "scheduler",
}


def request_from_args(args: argparse.Namespace) -> Img2ImgRequest:
    """
    The request the options describe.

    Raises:
        InvalidRequestError: A field is missing or out of range.
    """
    fields: dict[str, Any] = {
        "model_id": args.model_id,
        "prompt": args.prompt,
        "init_image": args.init_image,
    }
    for option, name in REQUEST_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            fields[name] = value
    return Img2ImgRequest(**fields)


async def run_img2img(
    settings: Settings,
    request: Img2ImgRequest,
    *,
    out_dir: Path | None,
    out: TextIO,
    err: TextIO,
    allow_private: bool = False,
    max_image_bytes: int = 50 * 1024 * 1024,
) -> int:
    """Run one job (and download its images into ``out_dir``); returns the exit status."""
    started = time.monotonic()
    policy = await download_policy(
        settings.base_url, allow_private=allow_private, max_bytes=max_image_bytes
    )

    def on_event(event: JobEvent) -> None:
        parts = [f"{time.monotonic() - started:6.2f}s {event.kind}"]
        if event.server:
            parts.append(f"server={event.server}")
        if event.request_id:
            parts.append(f"request_id={event.request_id}")
        if event.eta is not None:
            parts.append(f"eta={event.eta:g}s")
        if event.wait is not None:
            parts.append(f"wait={event.wait:.2f}s")
        if event.error:
            parts.append(event.error)
        err.write(" ".join(parts) + "\n")
        err.flush()

    async with (
        shared_backend(settings.redis_url) as backend,
        settings.client(backend=backend) as client,
    ):

        async def work() -> tuple[ImageResult, DownloadResult | None]:
            result = await client.img2img(request, on_event=on_event)
            if out_dir is None:
                return result, None
            async with SafeFetcher(policy) as fetcher:
                downloader = Downloader(fetcher, out_dir)
                return result, await downloader.fetch_job(result.id or "img2img", result.output)

        try:
            done, interrupted = await run_interruptibly(work())
        except ModelsLabError as error:
            report = {
                "status": "failed",
                "error_type": type(error).__name__,
                "error": short(str(error)),
                "request_id": getattr(error, "request_id", None),
                "server": error.server,
                "attempts": len(error.attempts),
                "possible_duplicate": error.possible_duplicate,
            }
            _print(out, report)
            return EXIT_FAILED
    if interrupted or done is None:
        return EXIT_INTERRUPTED
    result, download = done
    report = {
        "status": "succeeded",
        "id": result.id,
        "server": result.server,
        "output": list(result.output),
        "images": [] if download is None else list(download.paths),
        "attempts": result.attempts,
        "elapsed": round(result.elapsed, 3),
        "possible_duplicate": result.possible_duplicate,
    }
    if download is not None and download.error is not None:
        reason = short(str(download.error))
        report |= {"status": "failed", "error_type": "DownloadError", "error": reason}
        _print(out, report)
        return EXIT_FAILED
    _print(out, report)
    return EXIT_OK


def _print(out: TextIO, report: dict[str, Any]) -> None:
    out.write(json.dumps(report) + "\n")
    out.flush()
