"""
Figure 4: memory while streaming 1,000,000 jobs.

The `Dispatcher` reads a generator of 1,000,000 distinct `Img2ImgRequest` objects (built one by
one as the dispatcher pulls them: only the prompt differs) and answers each through a
`MockTransport` (``record=False``) whose handler returns one prebuilt success answer (the
fake's own body, ~1.1 kB of JSON, parsed for every job as usual). RSS (``VmRSS`` from
``/proc/self/status``) is sampled every 100,000 outcomes; the peak is
``resource.getrusage(RUSAGE_SELF).ru_maxrss``.

For comparison, the hand-written baseline (``asyncio.gather`` over a semaphore) runs the same
jobs with the same in-process answer (``json.loads`` of the same bytes, no HTTP): ``gather``
takes all its coroutines at once, so its memory grows with the batch. modelslab-py has no
pluggable transport and uses the same gather pattern, so it is not run here.

Each contender runs in its own child process (the peak RSS is per process).
Run: ``python benchmarks/bench_memory.py`` (``--quick``: 100,000 jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _fakeproc import REQUEST_FIELDS, table, write_result

from modelslab_async import Client, Img2ImgRequest, RawResponse, Server, ServerPool
from modelslab_async.testing import MockTransport

JOBS = 1_000_000
SAMPLE_EVERY = 100_000
CONCURRENCY = 64
TARGET_MB = 100.0
# The success answer of the fake for REQUEST_FIELDS (recorded from FakeModelsLab).
ANSWER = {
    "status": "success",
    "generationTime": 0.0,
    "id": 13443927,
    "output": ["http://127.0.0.1:8765/generations/2e1f0d6e-93c1-4c8f-a3a4-6f1b1e0c1a2b-0.png"],
    "proxy_links": ["http://127.0.0.1:8765/generations/2e1f0d6e-93c1-4c8f-a3a4-6f1b1e0c1a2b-0.png"],
    "nsfw_content_detected": False,
    "webhook_status": "",
    "tip": "Get 20x faster image generation using enterprise plan. "
    "Click here : https://modelslab.com/enterprise",
    "meta": {
        **{k: v for k, v in REQUEST_FIELDS.items() if k not in ("width", "height")},
        "scheduler": "UniPCMultistepScheduler",
        "safetychecker": "yes",
        "safety_checker_type": "sensitive_content_text",
        "negative_prompt": "",
        "W": 512,
        "H": 512,
        "guidance_scale": 7.5,
        "steps": 31,
        "n_samples": 1,
        "clip_skip": 1,
        "enhance_prompt": "yes",
        "tomesd": "yes",
        "use_karras_sigmas": "yes",
        "algorithm_type": "",
        "lora": None,
        "lora_strength": None,
        "vae": None,
        "base64": "no",
        "temp": "no",
        "webhook": None,
        "track_id": None,
        "seed": 1234567890,
        "full_url": "no",
        "upscale": "no",
        "outdir": "out",
        "file_prefix": "2e1f0d6e-93c1-4c8f-a3a4-6f1b1e0c1a2b",
        "id": "13443927",
    },
}
ANSWER_BYTES = json.dumps(ANSWER).encode()


def rss_mb() -> float:
    """Resident set size now, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """Peak RSS of this process: VmHWM, or ru_maxrss if higher (both KiB on Linux)."""
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return max(hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def requests(count: int) -> Iterator[Img2ImgRequest]:
    fields = {k: v for k, v in REQUEST_FIELDS.items() if k != "prompt"}
    for n in range(count):
        yield Img2ImgRequest(prompt=f"a watercolor fox, variation {n}", **fields)


async def child_ours(jobs: int) -> dict[str, Any]:
    answer = RawResponse(200, {"content-type": "application/json"}, ANSWER_BYTES)
    transport = MockTransport(lambda _: answer, record=False)
    pool = ServerPool(
        [Server(key=f"mem-key-{n}", name=f"server-{n}", max_concurrency=16) for n in range(4)]
    )
    samples = [{"outcomes": 0, "rss_mb": rss_mb(), "t": 0.0}]
    ok = 0
    started = time.perf_counter()
    async with Client(
        pool, base_url="http://fake.invalid/api/v1/enterprise", transport=transport
    ) as client:
        count = 0
        async for outcome in client.img2img_batch(requests(jobs), concurrency=CONCURRENCY):
            ok += outcome.ok
            count += 1
            if count % SAMPLE_EVERY == 0:
                samples.append(
                    {
                        "outcomes": count,
                        "rss_mb": rss_mb(),
                        "t": time.perf_counter() - started,
                    }
                )
    return {
        "ok": ok,
        "samples": samples,
        "peak_mb": peak_mb(),
        "wall": time.perf_counter() - started,
    }


async def child_raw(jobs: int) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(CONCURRENCY)
    samples = [{"outcomes": 0, "rss_mb": rss_mb(), "t": 0.0}]
    done = 0
    started = time.perf_counter()

    async def answer(body: dict[str, Any]) -> bytes:  # stands in for the POST
        return ANSWER_BYTES

    async def one(request: Img2ImgRequest) -> bool:
        nonlocal done
        async with semaphore:
            body = {"model_id": request.model_id, "prompt": request.prompt, "key": "k"}
            data = json.loads(await answer(body))
        done += 1
        if done % SAMPLE_EVERY == 0:
            samples.append(
                {"outcomes": done, "rss_mb": rss_mb(), "t": time.perf_counter() - started}
            )
        return data["status"] == "success"

    results = await asyncio.gather(*(one(r) for r in requests(jobs)))
    return {
        "ok": sum(results),
        "samples": samples,
        "peak_mb": peak_mb(),
        "wall": time.perf_counter() - started,
    }


def run_child(name: str, jobs: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--jobs", str(jobs)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="100,000 jobs")
    parser.add_argument("--child", choices=["ours", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    jobs = args.jobs or (100_000 if args.quick else JOBS)
    if args.child:
        runner = child_ours if args.child == "ours" else child_raw
        print(json.dumps(asyncio.run(runner(jobs))))
        return
    results = {}
    for name, label in (("ours", "modelslab-async Dispatcher"), ("raw", "raw gather + semaphore")):
        print(f"  {label}", file=sys.stderr)
        results[label] = run_child(name, jobs)
    rows = []
    for label, r in results.items():
        s = r["samples"]
        first, last = s[1]["rss_mb"], s[-1]["rss_mb"]
        r["growth_mb"] = last - first
        rows.append(
            [
                label,
                f"{r['ok']:,}/{jobs:,}",
                f"{s[0]['rss_mb']:.1f}",
                f"{first:.1f}",
                f"{last:.1f}",
                f"{last - first:+.1f}",
                f"{r['peak_mb']:.1f}",
                f"{r['wall']:.0f}",
            ]
        )
    print(
        f"\nMemory: {jobs:,} jobs streamed through an in-process transport, "
        f"concurrency {CONCURRENCY}\n"
    )
    print(
        table(
            [
                "contender",
                "ok",
                "RSS at start MB",
                f"RSS at {SAMPLE_EVERY:,} MB",
                f"RSS at {jobs:,} MB",
                "growth MB",
                "peak RSS MB",
                "wall s",
            ],
            rows,
        )
    )
    print("\nRSS (MB) every 100,000 outcomes, ours:")
    print(" ".join(f"{x['rss_mb']:.1f}" for x in results["modelslab-async Dispatcher"]["samples"]))
    path = write_result(
        "memory",
        {
            "jobs": jobs,
            "concurrency": CONCURRENCY,
            "sample_every": SAMPLE_EVERY,
            "target_mb": TARGET_MB,
            "results": results,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
