"""
Figure 2: batch makespan on a heterogeneous pool, against the ideal.

Three fake servers in a separate process, with different GPU slots and service times; the
slow one's jobs take longer than the processing threshold, so they are answered
``processing`` and collected by polling. The client's ``Server(max_concurrency=...)`` matches
each server's slots, and every other setting is the client's default (poll, retry, health).

Ideal makespan = jobs / sum(slots_i / service_time_i): the pool kept fully busy, with no
client cost and no tail. With a failure, one server is taken down (its gateway answers 502) at
half the ideal makespan for the rest of the run; the ideal is then the fluid bound with that
server's rate lost from that moment on.

Contenders: our `Dispatcher` with ``least-busy``, ``round-robin`` and ``first-server`` routing,
and the hand-written baseline: ``asyncio.gather`` + a semaphore of the pool's total slots +
aiohttp with the first key (the documented load balancer), fetching a queued job every second.

While each run goes, a thread samples the fake's per-server jobs in progress, for the
utilisation plot. Run: ``python benchmarks/bench_makespan.py`` (``--quick``: fewer jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

import aiohttp
from _fakeproc import REQUEST_FIELDS, FakeProcess, ServerSpec, median, table, write_result

from modelslab_async import (
    Client,
    Dispatcher,
    Img2ImgRequest,
    Server,
    ServerPool,
    request_to_wire,
)

SERVERS = (
    ServerSpec("server-1", 4, 0.2),
    ServerSpec("server-2", 2, 0.1),
    ServerSpec("server-3", 1, 0.6),  # slower than the threshold: answered "processing"
)
PROCESSING_THRESHOLD = 0.5
JOBS = 400
REPEATS = 3
FAIL_SERVER = "server-2"  # 20 of the pool's 41.7 jobs/s
SAMPLE_EVERY = 0.043  # seconds between utilisation samples (prime to the service times)
RAW_POLL_INTERVAL = 1.0  # the baseline's fixed fetch interval
TARGET = 1.10
TARGET_FAILURE = 1.20
ROUTINGS = ("least-busy", "round-robin", "first-server")


def pool_rate(servers: tuple[ServerSpec, ...]) -> float:
    """Jobs per second of the pool when every slot is busy."""
    return sum(s.slots / s.service_time for s in servers)


def ideal_makespan(jobs: int, fail_at: float | None) -> float:
    """The fluid bound; with a failure, FAIL_SERVER's rate is lost from ``fail_at`` on."""
    full = pool_rate(SERVERS)
    if fail_at is None or jobs <= full * fail_at:
        return jobs / full
    rest = pool_rate(tuple(s for s in SERVERS if s.name != FAIL_SERVER))
    return fail_at + (jobs - full * fail_at) / rest


class Sampler(threading.Thread):
    """Samples the fake's jobs in progress per server; takes a server down on schedule."""

    def __init__(self, fake: FakeProcess, fail_at: float | None) -> None:
        super().__init__(daemon=True)
        self.fake = fake
        self.fail_at = fail_at
        self.failed_at: float | None = None
        self.samples: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            now = time.monotonic() - self.started
            if self.fail_at is not None and self.failed_at is None and now >= self.fail_at:
                self.fake.set_down(FAIL_SERVER)
                self.failed_at = time.monotonic() - self.started
            stats = self.fake.stats()
            self.samples.append(
                {
                    "t": round(stats["t"] - self.started, 3),
                    "busy": {
                        s["name"]: min(s["outstanding"], s["slots"]) / s["slots"]
                        for s in stats["servers"]
                    },
                }
            )
            self._stop_event.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


async def run_ours(fake: FakeProcess, routing: str, jobs: int) -> dict[str, Any]:
    pool = ServerPool(
        [
            Server(key=key, name=spec.name, max_concurrency=spec.slots)
            for key, spec in zip(fake.keys, SERVERS, strict=True)
        ],
        routing=routing,  # type: ignore[arg-type]
    )
    request = Img2ImgRequest(**REQUEST_FIELDS)
    ok = failed = duplicates = 0
    async with Client(pool, base_url=fake.base_url) as client:
        dispatcher = Dispatcher(client)  # concurrency: the pool's capacity
        async for outcome in dispatcher.run(request for _ in range(jobs)):
            ok += outcome.ok
            failed += not outcome.ok
            duplicates += outcome.possible_duplicate
        progress = dispatcher.progress
    return {
        "ok": ok,
        "failed": failed,
        "possible_duplicates": duplicates,
        "retries": progress.retries,
        "reroutes": progress.reroutes,
    }


async def run_raw(fake: FakeProcess, jobs: int) -> dict[str, Any]:
    """The hand-written baseline: gather + semaphore + first key + a fixed fetch interval."""
    body = request_to_wire(Img2ImgRequest(**REQUEST_FIELDS))
    key = fake.keys[0]
    semaphore = asyncio.Semaphore(sum(s.slots for s in SERVERS))
    async with aiohttp.ClientSession() as session:

        async def post(path: str, fields: dict[str, Any]) -> dict[str, Any]:
            async with session.post(f"{fake.base_url}/{path}", json={**fields, "key": key}) as r:
                answer: dict[str, Any] = json.loads(await r.read())
                return answer

        async def one() -> bool:
            async with semaphore:
                answer = await post("img2img", body)
                while answer.get("status") == "processing" and answer.get("id") is not None:
                    await asyncio.sleep(RAW_POLL_INTERVAL)
                    answer = await post("fetch", {"request_id": str(answer["id"])})
                return answer.get("status") == "success"

        results = await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
    ok = sum(r is True for r in results)
    return {"ok": ok, "failed": jobs - ok, "possible_duplicates": 0, "retries": 0, "reroutes": 0}


async def one_run(name: str, jobs: int, fail_at: float | None, seed: int) -> dict[str, Any]:
    """A fresh fake, one batch, samples; returns the makespan and the outcomes."""
    with FakeProcess(SERVERS, processing_threshold=PROCESSING_THRESHOLD, seed=seed) as fake:
        sampler = Sampler(fake, fail_at)
        sampler.start()
        started = time.monotonic()
        if name == "raw aiohttp":
            result = await run_raw(fake, jobs)
        else:
            result = await run_ours(fake, name, jobs)
        makespan = time.monotonic() - started
        sampler.stop()
        accepted = {s["name"]: s["accepted"] for s in fake.stats()["servers"]}
    result.update(
        makespan=makespan,
        outcomes=result["ok"] + result["failed"],
        accepted_by_server=accepted,
        accepted_extra=sum(accepted.values()) - jobs,
        failed_at=sampler.failed_at,
        samples=sampler.samples,
    )
    return result


def summarise(runs: list[dict[str, Any]], ideal: float) -> dict[str, Any]:
    makespans = [r["makespan"] for r in runs]
    middle = sorted(runs, key=lambda r: r["makespan"])[len(runs) // 2]
    return {
        "makespan": median(makespans),
        "makespans": makespans,
        "ratio": median(makespans) / ideal,
        "ok_min": min(r["ok"] for r in runs),
        "outcomes_min": min(r["outcomes"] for r in runs),
        "failed_max": max(r["failed"] for r in runs),
        "possible_duplicates_max": max(r["possible_duplicates"] for r in runs),
        "accepted_extra_max": max(r["accepted_extra"] for r in runs),
        "retries_median": median([r["retries"] for r in runs]),
        "reroutes_median": median([r["reroutes"] for r in runs]),
        "median_run": {k: v for k, v in middle.items() if k != "samples"},
        "samples": middle["samples"],
    }


async def main_async(args: argparse.Namespace) -> None:
    jobs = 150 if args.quick else JOBS
    repeats = 1 if args.quick else REPEATS
    contenders = [*ROUTINGS, "raw aiohttp"]
    ideal = ideal_makespan(jobs, None)
    fail_at = ideal / 2
    ideal_fail = ideal_makespan(jobs, fail_at)
    scenarios = {"steady": (None, ideal), "failure": (fail_at, ideal_fail)}
    results: dict[str, dict[str, Any]] = {s: {} for s in scenarios}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(repeats):
        for scenario, (fail, _) in scenarios.items():
            for name in contenders:
                print(f"  {scenario} {name} run {repeat + 1}", file=sys.stderr)
                result = await one_run(name, jobs, fail, seed=repeat)
                runs.setdefault((scenario, name), []).append(result)
    for (scenario, name), done in runs.items():
        results[scenario][name] = summarise(done, scenarios[scenario][1])
    rows = []
    for scenario, (_, bound) in scenarios.items():
        target = TARGET if scenario == "steady" else TARGET_FAILURE
        for name in contenders:
            r = results[scenario][name]
            rows.append(
                [
                    scenario,
                    name,
                    f"{r['outcomes_min']}/{jobs}",
                    r["failed_max"],
                    f"{r['makespan']:.2f}",
                    f"{bound:.2f}",
                    f"{r['ratio']:.3f}x",
                    f"<= {target:.2f}x",
                    r["possible_duplicates_max"],
                    r["accepted_extra_max"],
                    f"{r['retries_median']:.0f}",
                ]
            )
    print(
        f"\nMakespan: {jobs} jobs on {', '.join(f'{s.slots}x{s.service_time}s' for s in SERVERS)}"
        f" (pool {pool_rate(SERVERS):.1f} jobs/s); failure: {FAIL_SERVER} down from "
        f"t={fail_at:.1f}s; median of {repeats} runs\n"
    )
    print(
        table(
            [
                "scenario",
                "contender",
                "outcomes",
                "failed",
                "makespan s",
                "ideal s",
                "vs ideal",
                "target",
                "possible dup.",
                "extra accepted",
                "retries",
            ],
            rows,
        )
    )
    path = write_result(
        "makespan",
        {
            "jobs": jobs,
            "repeats": repeats,
            "servers": [
                {"name": s.name, "slots": s.slots, "service_time": s.service_time} for s in SERVERS
            ],
            "processing_threshold": PROCESSING_THRESHOLD,
            "pool_rate": pool_rate(SERVERS),
            "fail_server": FAIL_SERVER,
            "fail_at": fail_at,
            "ideal": ideal,
            "ideal_failure": ideal_fail,
            "targets": {"steady": TARGET, "failure": TARGET_FAILURE},
            "results": results,
        },
    )
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one run (a smoke run)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
