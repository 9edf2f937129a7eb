"""
The ``demo`` command: a batch against an embedded fake pool, through the same code path as
``batch``, with faults injected so the summary shows what the client recovers from.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from .. import HealthPolicy, InvalidRequestError, PollPolicy, RetryPolicy, Server, Timeouts
from ._commands import execute_batch
from ._exit import EXIT_INTERRUPTED, EXIT_OK
from ._inputs import BatchOptions
from ._settings import Settings

__all__ = ["DEMO_DIR_ENV", "demo_directory", "run_demo"]

DEMO_DIR_ENV = "MODELSLAB_DEMO_DIR"
_DEFAULT_DIR = "modelslab-demo"
_PROMPTS = (
    "a watercolor lighthouse at dawn",
    "a cyberpunk street market in the rain",
    "a cozy cabin in a snowy forest",
    "a portrait of an astronaut cat",
    "an isometric city made of glass",
    "a bowl of ramen, studio lighting",
)
# (name, GPU slots, seconds per job): the client is told each can hold two more jobs than it
# has slots, so jobs queue on the servers and some answer "processing".
_SERVERS = (("fast", 3, 0.25), ("slow", 2, 1.5), ("flaky", 2, 0.4))


def _png(side: int, colour: tuple[int, int, int]) -> bytes:
    """A square PNG of one colour: the demo's init image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + bytes(colour) * side) * side)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def demo_directory(option: Path | None, environ: Mapping[str, str] | None = None) -> Path:
    """``--dir``, else ``MODELSLAB_DEMO_DIR``, else ``./modelslab-demo``."""
    env = os.environ if environ is None else environ
    return option or Path(env.get(DEMO_DIR_ENV) or _DEFAULT_DIR)


def _write_inputs(directory: Path, jobs: int) -> Path:
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    # Results and images of an earlier demo: the new fake knows none of their jobs.
    (directory / "results.jsonl").unlink(missing_ok=True)
    for old in images.glob("demo-*"):
        old.unlink()
    (directory / "init.png").write_bytes(_png(64, (40, 120, 200)))
    manifest = directory / "manifest.jsonl"
    with manifest.open("w", encoding="utf-8") as stream:
        for n in range(1, jobs + 1):
            line: dict[str, object] = {
                "id": f"demo-{n:02d}",
                "model_id": "realistic-vision-51",
                "prompt": _PROMPTS[n % len(_PROMPTS)],
                "init_image": "init.png" if n == 1 else f"https://picsum.photos/seed/{n}/512",
                "strength": round(0.5 + (n % 5) / 10, 1),
                "width": 512,
                "height": 512,
                "num_inference_steps": 31,
                "seed": 1000 + n,
                "track_id": f"demo-{n:02d}",
            }
            if n % 7 == 0:
                line["samples"] = 2
            stream.write(json.dumps(line) + "\n")
    return manifest


async def run_demo(
    directory: Path,
    *,
    jobs: int,
    out: TextIO,
    err: TextIO,
    interactive: bool | None = None,
) -> int:
    """Run the demo batch in ``directory``: 0 when it ran to the end, 130 if interrupted."""
    from ..testing import FakeModelsLab, FakeServerSpec, Fault  # noqa: PLC0415 - demo only

    try:
        manifest = _write_inputs(directory, jobs)
    except OSError as error:
        raise InvalidRequestError(
            "--dir", f"cannot write the demo into {directory}: {error.strerror}"
        ) from None
    keys = {name: secrets.token_urlsafe(24) for name, _, _ in _SERVERS}  # never shown
    specs = [
        FakeServerSpec(name, keys[name], slots=slots, service_time=seconds, service_jitter=0.3)
        for name, slots, seconds in _SERVERS
    ]
    async with FakeModelsLab(specs, processing_threshold=0.6, seed=2024) as fake:
        for fault in (
            Fault.rate_limit(retry_after=0.5, route="flaky"),
            Fault.drop(after_accept=True, route="flaky"),
            Fault.server_error(500, route="flaky"),
            Fault.server_error(503, route="slow", endpoint="fetch"),
            Fault.server_error(503, endpoint="image"),  # retried, then saved
            Fault.server_error(404, endpoint="image"),  # not retried: one download fails
        ):
            fake.add_fault(fault)
        settings = Settings(
            servers=tuple(
                Server(key=keys[name], name=name, max_concurrency=slots + 2)
                for name, slots, _ in _SERVERS
            ),
            base_url=fake.base_url,
            routing="least-busy",
            retry=RetryPolicy(wait_initial=0.1, wait_max=1.0, retry_after_max=2.0),
            health=HealthPolicy(rate_limit_cooldown=0.5, busy_cooldown=0.2, reset_timeout=2.0),
            poll=PollPolicy(initial_interval=0.25, max_interval=1.0),
            timeouts=Timeouts(job=45.0),
        )
        err.write(
            f"demo: {jobs} jobs on 3 fake enterprise servers at {fake.base_url}\n"
            "demo: fast (3 GPUs, 0.25s/job), slow (2 GPUs, 1.5s/job: jobs answer 'processing'),\n"
            "demo: flaky (2 GPUs, 0.4s/job; one 429, one dropped connection, one 500);\n"
            "demo: one failed poll on slow, one retried and one failing image download\n"
        )
        err.flush()
        options = BatchOptions(
            manifest=manifest,
            results=directory / "results.jsonl",
            images=directory / "images",
            verbose=True,
        )
        summary = io.StringIO()
        code = await execute_batch(settings, options, out=summary, err=err, interactive=interactive)
    (directory / "summary.json").write_text(summary.getvalue(), encoding="utf-8")
    if code == EXIT_INTERRUPTED:
        return code
    out.write(
        f"Demo finished. Everything is in {directory}/:\n"
        f"  manifest  {manifest}\n"
        f"  results   {options.results}   (one JSON line per job)\n"
        f"  images    {options.images}/\n"
        f"  summary   {directory / 'summary.json'}\n"
        f"Run a batch of your own:\n"
        f"  export MODELSLAB_API_KEYS=key-of-server-1,key-of-server-2\n"
        f"  modelslab-async batch {manifest} --out results.jsonl --images images/\n"
    )
    out.flush()
    return EXIT_OK
