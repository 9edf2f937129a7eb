"""
Figure 8: ``ordered=True`` against unordered wall time, with 10% slow jobs.

Every tenth job takes 10x as long as the others (in-process answers after a sleep: 10 ms, or
100 ms for a slow one). In input order, the outcomes behind a slow job wait in the reorder buffer
while later jobs keep running. Target: ordered within 1.2x of unordered.
Run: ``python benchmarks/bench_ordered.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _fakeproc import REQUEST_FIELDS, median, table, write_result

from modelslab_async import Client, Img2ImgRequest, RawResponse, Server, ServerPool

ANSWER = RawResponse(
    200,
    {},
    json.dumps({"status": "success", "id": 1, "output": ["https://cdn.example/1.png"]}).encode(),
)
FAST, SLOW = 0.01, 0.1


class _Sleepy:
    """Answers after FAST seconds, or SLOW for prompts that say so."""

    async def post_json(self, url: str, body: Any, *, timeout: float, server: str) -> RawResponse:
        await asyncio.sleep(SLOW if body["prompt"] == "slow" else FAST)
        return ANSWER

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        return ANSWER

    async def aclose(self) -> None:
        return None


async def wall(ordered: bool, jobs: int, concurrency: int, seed: int) -> float:
    rng = random.Random(seed)
    fields = dict(REQUEST_FIELDS)
    requests = [
        Img2ImgRequest(**{**fields, "prompt": "slow" if rng.random() < 0.1 else "fast"})
        for _ in range(jobs)
    ]
    pool = ServerPool([Server(key="ordered-key-0001", max_concurrency=concurrency)])
    async with Client(pool, transport=_Sleepy()) as client:
        started = time.perf_counter()
        async for _ in client.img2img_batch(requests, concurrency=concurrency, ordered=ordered):
            pass
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    rows = []
    for seed in range(3):
        unordered = asyncio.run(wall(False, args.jobs, args.concurrency, seed))
        ordered = asyncio.run(wall(True, args.jobs, args.concurrency, seed))
        rows.append({"seed": seed, "unordered_s": unordered, "ordered_s": ordered})
    ratio = median([r["ordered_s"] / r["unordered_s"] for r in rows])
    print(
        table(
            ["seed", "unordered s", "ordered s", "ratio"],
            [
                [
                    r["seed"],
                    f"{r['unordered_s']:.2f}",
                    f"{r['ordered_s']:.2f}",
                    f"{r['ordered_s'] / r['unordered_s']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    print(f"median ratio {ratio:.2f}x (target <= 1.2x)")
    write_result(
        "ordered",
        {"jobs": args.jobs, "concurrency": args.concurrency, "rows": rows, "median_ratio": ratio},
    )


if __name__ == "__main__":
    main()
