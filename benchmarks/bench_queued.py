"""
Figure 3: time to result for queued jobs, and fetch calls per job.

Every job is longer than the fake's processing threshold, so the submit is answered
``processing`` with an ``eta`` and the job is collected through the fetch endpoint. The fake is
deterministic (no jitter) and never queues a job behind another (the clients hold at most as
many jobs as there are slots; checked), so a job's result exists at exactly
``submit arrival + service time`` on the fake's clock, which is the same CLOCK_MONOTONIC as
the client's. The *delay* of a job is the client's return time minus that moment; the fetch
calls per job are counted by the fake (its record of received requests, by request id).

Two servers: 2.5 s and 6.5 s jobs (neither a multiple of the contenders' fixed intervals).

Contenders, each at the same concurrency with the first key (the documented balancer):

* ``modelslab-async``: ``client.img2img_batch(...)`` with default settings (polls at the
  server's eta plus 5% and up to 5% jitter).
* ``raw aiohttp``: gather + semaphore, fetching every ``RAW_POLL_INTERVAL`` seconds.
* ``modelslab-py``: ``async_image_to_image`` then ``async_fetch(id)``, which fetches at once
  and then sleeps ``Client.fetch_timeout`` between fetches. Measured with its default of 60 s
  (one run) and with 5 s.

Run: ``python benchmarks/bench_queued.py`` (``--quick``: fewer jobs, no 60 s SDK run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from _fakeproc import REQUEST_FIELDS, FakeProcess, ServerSpec, median, table, write_result

from modelslab_async import Client, Img2ImgRequest, Server, request_to_wire

SERVERS = (ServerSpec("server-1", 32, 2.5), ServerSpec("server-2", 32, 6.5))
PROCESSING_THRESHOLD = 0.5
CONCURRENCY = 64  # = the slots: nothing queues behind another job on the fake
JOBS = 192
REPEATS = 3
RAW_POLL_INTERVAL = 1.0
SDK_FETCH_TIMEOUTS = (5, 60)  # 60 is the SDK's default
TARGET_DELAY = 0.10  # of the job's duration
TARGET_FETCHES = 3.0

Returned = list[tuple[str, float]]  # (request id, client return time)


async def run_ours(fake: FakeProcess, jobs: int) -> Returned:
    request = Img2ImgRequest(**REQUEST_FIELDS)
    returned: Returned = []
    servers = [
        Server(key=key, name=spec.name, max_concurrency=spec.slots)
        for key, spec in zip(fake.keys, SERVERS, strict=True)
    ]
    async with Client(servers, base_url=fake.base_url) as client:
        async for outcome in client.img2img_batch(
            (request for _ in range(jobs)), concurrency=CONCURRENCY
        ):
            now = time.monotonic()
            if outcome.ok and outcome.result is not None:
                returned.append((str(outcome.result.id), now))
    return returned


async def run_raw(fake: FakeProcess, jobs: int) -> Returned:
    body = request_to_wire(Img2ImgRequest(**REQUEST_FIELDS))
    key = fake.keys[0]
    semaphore = asyncio.Semaphore(CONCURRENCY)
    returned: Returned = []
    async with aiohttp.ClientSession() as session:

        async def post(path: str, fields: dict[str, Any]) -> dict[str, Any]:
            async with session.post(f"{fake.base_url}/{path}", json={**fields, "key": key}) as r:
                answer: dict[str, Any] = json.loads(await r.read())
                return answer

        async def one() -> None:
            async with semaphore:
                answer = await post("img2img", body)
                request_id = str(answer["id"])
                while answer.get("status") == "processing":
                    await asyncio.sleep(RAW_POLL_INTERVAL)
                    answer = await post("fetch", {"request_id": request_id})
                if answer.get("status") == "success":
                    returned.append((request_id, time.monotonic()))

        await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
    return returned


def sdk_runner(fetch_timeout: int) -> Callable[[FakeProcess, int], Awaitable[Returned]]:
    async def run_sdk(fake: FakeProcess, jobs: int) -> Returned:
        from modelslab_py.core.apis.community import Community  # noqa: PLC0415
        from modelslab_py.core.client import Client as SdkClient  # noqa: PLC0415
        from modelslab_py.schemas.community import Image2Image  # noqa: PLC0415

        sdk = SdkClient(api_key=fake.keys[0], fetch_timeout=fetch_timeout)
        sdk.base_url = fake.base_url.removesuffix("v1/enterprise")  # an instance attribute
        api = Community(client=sdk, enterprise=True)
        schema = Image2Image(**REQUEST_FIELDS)
        semaphore = asyncio.Semaphore(CONCURRENCY)
        returned: Returned = []

        async def one() -> None:
            async with semaphore:
                answer = await api.async_image_to_image(schema)
                if answer.get("status") == "processing":
                    answer = await api.async_fetch(str(answer["id"]))
                if answer.get("status") == "success":
                    returned.append((str(answer["id"]), time.monotonic()))

        try:
            results = await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
        finally:
            await sdk.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            print(f"  modelslab-py: {len(errors)} errors, first: {errors[0]!r}", file=sys.stderr)
        return returned

    return run_sdk


async def one_run(
    runner: Callable[[FakeProcess, int], Awaitable[Returned]], jobs: int
) -> dict[str, Any]:
    """A fresh fake; one batch; delays and fetches per job from the fake's records."""
    with FakeProcess(
        SERVERS, processing_threshold=PROCESSING_THRESHOLD, max_records=100_000
    ) as fake:
        started = time.monotonic()
        returned = await runner(fake, jobs)
        wall = time.monotonic() - started
        records = fake.records()
        stats = fake.stats()["servers"]
    service = {s.name: s.service_time for s in SERVERS}
    ready: dict[str, tuple[float, float]] = {}
    fetches: Counter[str] = Counter()
    for record in records:
        if record["endpoint"] == "submit" and record["request_id"]:
            duration = service[record["server"]]
            ready[record["request_id"]] = (record["at"] + duration, duration)
        elif record["endpoint"] == "fetch" and record["request_id"]:
            fetches[record["request_id"]] += 1
    delays, relative, per_job = [], [], []
    for request_id, at in returned:
        finish, duration = ready[request_id]
        delays.append(at - finish)
        relative.append((at - finish) / duration)
        per_job.append(fetches[request_id])
    return {
        "jobs": jobs,
        "ok": len(returned),
        "wall": wall,
        "queued_on_fake": max(s["max_outstanding"] - s["slots"] for s in stats),
        "delay_mean_s": statistics.fmean(delays),
        "delay_max_s": max(delays),
        "delay_min_s": min(delays),
        "relative_mean": statistics.fmean(relative),
        "relative_p95": sorted(relative)[int(0.95 * (len(relative) - 1))],
        "relative_max": max(relative),
        "fetches_mean": statistics.fmean(per_job),
        "fetches_max": max(per_job),
        "fetch_histogram": dict(sorted(Counter(per_job).items())),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the runs (and the runs themselves)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k not in ("jobs", "ok")]
    summary: dict[str, Any] = {k: median([r[k] for r in runs]) for k in keys}
    summary["jobs"] = runs[0]["jobs"]
    summary["ok_min"] = min(r["ok"] for r in runs)
    summary["repeats"] = len(runs)
    summary["runs"] = runs
    return summary


async def main_async(args: argparse.Namespace) -> None:
    jobs = 64 if args.quick else JOBS
    repeats = 1 if args.quick else REPEATS
    contenders: dict[str, tuple[Callable[[FakeProcess, int], Awaitable[Returned]], int, int]] = {
        "modelslab-async": (run_ours, jobs, repeats),
        f"raw aiohttp (fetch every {RAW_POLL_INTERVAL:g} s)": (run_raw, jobs, repeats),
    }
    for timeout in SDK_FETCH_TIMEOUTS:
        if timeout >= 60 and args.quick:
            continue
        label = f"modelslab-py (fetch_timeout={timeout}{', default' if timeout == 60 else ''})"
        # The 60 s run is one wave of CONCURRENCY jobs, once: its delay is set by the sleep.
        contender_jobs, contender_repeats = (CONCURRENCY, 1) if timeout >= 60 else (jobs, repeats)
        contenders[label] = (sdk_runner(timeout), contender_jobs, contender_repeats)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        for name, (runner, n, times) in contenders.items():
            if repeat < times:
                print(f"  {name} run {repeat + 1}", file=sys.stderr)
                runs[name].append(await one_run(runner, n))
    for name, done in runs.items():
        results[name] = summarise(done)
    rows = [
        [
            name,
            f"{r['ok_min']}/{r['jobs']}",
            f"{r['delay_mean_s']:.3f}",
            f"{r['delay_max_s']:.3f}",
            f"{r['relative_mean']:.1%}",
            f"{r['relative_max']:.1%}",
            f"{r['fetches_mean']:.2f}",
            r["fetches_max"],
            r["repeats"],
        ]
        for name, r in results.items()
    ]
    print(
        f"\nTime to result: jobs of {' and '.join(f'{s.service_time:g} s' for s in SERVERS)}, "
        f"all answered 'processing'; concurrency {CONCURRENCY}; median of the runs\n"
    )
    print(
        table(
            [
                "contender",
                "ok",
                "mean delay s",
                "max delay s",
                "mean delay / duration",
                "max delay / duration",
                "fetches/job",
                "max fetches",
                "runs",
            ],
            rows,
        )
    )
    ours = results["modelslab-async"]
    print(
        f"\nTargets: delay < {TARGET_DELAY:.0%} of the duration (ours: mean "
        f"{ours['relative_mean']:.1%}, max {ours['relative_max']:.1%}); at most "
        f"{TARGET_FETCHES:g} fetches per job on average (ours: {ours['fetches_mean']:.2f})"
    )
    path = write_result(
        "queued",
        {
            "jobs": jobs,
            "concurrency": CONCURRENCY,
            "servers": [
                {"name": s.name, "slots": s.slots, "service_time": s.service_time} for s in SERVERS
            ],
            "processing_threshold": PROCESSING_THRESHOLD,
            "targets": {"delay_fraction": TARGET_DELAY, "fetches_per_job": TARGET_FETCHES},
            "results": results,
        },
    )
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one run each")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # modelslab-py's .dict()
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
