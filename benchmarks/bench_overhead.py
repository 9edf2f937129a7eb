"""
Figure 1: client overhead against raw aiohttp and the official SDK.

Jobs succeed at once (service time 0) on a fake pool of 4 servers in a separate process.
For each contender, the client process's CPU time per job (``time.process_time()`` around the
batch: the fake runs in the other process) and its jobs/s, at a fixed concurrency; then a
sweep of jobs/s against concurrency for the plot. Each figure is the median of ``REPEATS``
runs, the contenders interleaved run by run so that a disturbance hits them alike.

Contenders, all sending the same body and parsing the same JSON answer:

* ``modelslab-async (first-server)``: ``client.img2img_batch(...)`` (the `Dispatcher`),
  default routing: every job with the first key, balanced by the fake.
* ``modelslab-async (least-busy)``: the same with ``routing="least-busy"`` (each server's key).
* ``raw aiohttp``: ``asyncio.gather`` + ``asyncio.Semaphore`` + one ``aiohttp.ClientSession``,
  POST with the first key, ``json.loads`` of the body: the practical floor.
* ``modelslab-py``: the official SDK's ``Community(client, enterprise=True)
  .async_image_to_image(schema)`` under the same semaphore and gather. Its base URL is an
  instance attribute, ``client.base_url``, set to the fake's; no monkeypatching.

Run: ``python benchmarks/bench_overhead.py`` (``--quick`` for a smaller run,
``--profile`` to print where our client spends its CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import itertools
import json
import pstats
import sys
import time
import warnings
from typing import Any

import aiohttp
from _fakeproc import REQUEST_FIELDS, FakeProcess, ServerSpec, median, table, write_result

from modelslab_async import (
    AiohttpTransport,
    Client,
    Img2ImgRequest,
    RawResponse,
    Server,
    ServerPool,
    request_to_wire,
)

JOBS = 5000  # jobs per measured run
CONCURRENCY = 64  # jobs in flight
REPEATS = 5  # runs per figure; the median is reported
WARMUP = 300  # jobs run once per contender before measuring (connections, caches)
SERVERS = 4  # fake servers
SWEEP = (1, 4, 16, 64, 256)  # concurrency levels of the plot
SWEEP_JOBS = 2000  # jobs per sweep point
TARGET_CPU_RATIO = 1.25


class Contender:
    """One way of running a batch. ``open`` once, ``batch`` many times, ``close``."""

    name = ""

    async def open(self, fake: FakeProcess, concurrency: int) -> None:
        raise NotImplementedError

    async def batch(self, jobs: int) -> int:
        """Run ``jobs`` jobs; return how many succeeded."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class Ours(Contender):
    """modelslab-async: the Dispatcher through ``client.img2img_batch``."""

    def __init__(self, routing: str) -> None:
        self.routing = routing
        self.name = f"modelslab-async ({routing})"

    async def open(self, fake: FakeProcess, concurrency: int) -> None:
        per_server = max(1, -(-concurrency // len(fake.keys)))
        pool = ServerPool(
            [
                Server(key=key, name=spec.name, max_concurrency=per_server)
                for key, spec in zip(fake.keys, fake.servers, strict=True)
            ],
            routing=self.routing,  # type: ignore[arg-type]
        )
        self.client = Client(pool, base_url=fake.base_url)
        await self.client.__aenter__()
        self.request = Img2ImgRequest(**REQUEST_FIELDS)
        self.concurrency = concurrency

    async def batch(self, jobs: int) -> int:
        ok = 0
        requests = itertools.repeat(self.request, jobs)
        async for outcome in self.client.img2img_batch(requests, concurrency=self.concurrency):
            ok += outcome.ok
        return ok

    async def close(self) -> None:
        await self.client.aclose()


class RawAiohttp(Contender):
    """The hand-written baseline: gather + semaphore + aiohttp + json.loads."""

    name = "raw aiohttp"

    async def open(self, fake: FakeProcess, concurrency: int) -> None:
        self.session = aiohttp.ClientSession()
        self.url = f"{fake.base_url}/img2img"
        self.key = fake.keys[0]
        self.body = request_to_wire(Img2ImgRequest(**REQUEST_FIELDS))
        self.concurrency = concurrency

    async def batch(self, jobs: int) -> int:
        semaphore = asyncio.Semaphore(self.concurrency)
        session, url, body, key = self.session, self.url, self.body, self.key

        async def one() -> bool:
            async with semaphore, session.post(url, json={**body, "key": key}) as response:
                data = json.loads(await response.read())
            return data.get("status") == "success" and bool(data.get("output"))

        results = await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
        return sum(r is True for r in results)

    async def close(self) -> None:
        await self.session.close()


class ModelslabPy(Contender):
    """The official SDK's async image-to-image call, under a semaphore and gather."""

    name = "modelslab-py (async)"

    async def open(self, fake: FakeProcess, concurrency: int) -> None:
        from modelslab_py.core.apis.community import Community  # noqa: PLC0415
        from modelslab_py.core.client import Client as SdkClient  # noqa: PLC0415
        from modelslab_py.schemas.community import Image2Image  # noqa: PLC0415

        self.sdk = SdkClient(api_key=fake.keys[0])
        # The SDK builds every URL from this instance attribute ("https://modelslab.com/api/").
        self.sdk.base_url = fake.base_url.removesuffix("v1/enterprise")
        self.api = Community(client=self.sdk, enterprise=True)  # .../v1/enterprise/images/
        self.schema = Image2Image(**REQUEST_FIELDS)  # strength rides as an allowed extra field
        self.concurrency = concurrency

    async def batch(self, jobs: int) -> int:
        semaphore = asyncio.Semaphore(self.concurrency)
        api, schema = self.api, self.schema

        async def one() -> bool:
            async with semaphore:
                answer = await api.async_image_to_image(schema)
            return answer.get("status") == "success" and bool(answer.get("output"))

        results = await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            print(f"  modelslab-py: {len(errors)} errors, first: {errors[0]!r}", file=sys.stderr)
        return sum(r is True for r in results)

    async def close(self) -> None:
        await self.sdk.close()


class OurTransportOnly(Contender):
    """Diagnostic: the raw loop, but sending through our `AiohttpTransport` (same session setup,
    per-request timeouts and error mapping as the client) instead of ``session.post``."""

    name = "diagnostic: raw loop over our AiohttpTransport"

    async def open(self, fake: FakeProcess, concurrency: int) -> None:
        self.transport = AiohttpTransport(limit=max(100, 2 * concurrency + 8))
        self.url = f"{fake.base_url}/img2img"
        self.key = fake.keys[0]
        self.body = request_to_wire(Img2ImgRequest(**REQUEST_FIELDS))
        self.concurrency = concurrency

    async def batch(self, jobs: int) -> int:
        semaphore = asyncio.Semaphore(self.concurrency)
        transport, url, body, key = self.transport, self.url, self.body, self.key

        async def one() -> bool:
            async with semaphore:
                raw = await transport.post_json(
                    url, {**body, "key": key}, timeout=180.0, server="server-1"
                )
            data = json.loads(raw.body)
            return data.get("status") == "success" and bool(data.get("output"))

        results = await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
        return sum(r is True for r in results)

    async def close(self) -> None:
        await self.transport.aclose()


class _ConstantTransport:
    """Answers every POST with the same bytes, no network (for the client-only figure)."""

    def __init__(self, answer: RawResponse) -> None:
        self.answer = answer

    async def post_json(self, url: str, body: Any, *, timeout: float, server: str) -> RawResponse:
        return self.answer

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        return self.answer

    async def aclose(self) -> None:
        return None


async def client_only(fake: FakeProcess, jobs: int, concurrency: int) -> dict[str, float]:
    """
    Diagnostic: CPU per job of our client with the HTTP taken out (a constant in-process
    answer, the fake's real success body) next to the raw loop's equivalent (``json.loads``
    of the same bytes under the same semaphore and gather).
    """
    request = Img2ImgRequest(**REQUEST_FIELDS)
    async with aiohttp.ClientSession() as session:
        body = {**request_to_wire(request), "key": fake.keys[0]}
        async with session.post(f"{fake.base_url}/img2img", json=body) as response:
            answer = RawResponse(200, {"content-type": "application/json"}, await response.read())
    pool = ServerPool(
        [
            Server(key=key, name=spec.name, max_concurrency=max(1, concurrency // len(fake.keys)))
            for key, spec in zip(fake.keys, fake.servers, strict=True)
        ]
    )
    ours, raw = [], []
    async with Client(pool, base_url=fake.base_url, transport=_ConstantTransport(answer)) as client:

        async def run_ours(n: int) -> None:
            async for _ in client.img2img_batch(
                itertools.repeat(request, n), concurrency=concurrency
            ):
                pass

        async def run_raw(n: int) -> None:
            semaphore = asyncio.Semaphore(concurrency)

            async def post() -> RawResponse:
                return answer

            async def one() -> bool:
                async with semaphore:
                    raw_answer = await post()
                data = json.loads(raw_answer.body)
                return data.get("status") == "success"

            await asyncio.gather(*(one() for _ in range(n)))

        await run_ours(WARMUP)
        await run_raw(WARMUP)
        for _ in range(REPEATS):
            for runner, into in ((run_ours, ours), (run_raw, raw)):
                gc.collect()
                cpu0 = time.process_time()
                await runner(jobs)
                into.append((time.process_time() - cpu0) / jobs * 1e6)
    return {"ours_cpu_us_per_job": median(ours), "raw_cpu_us_per_job": median(raw)}


def contenders() -> list[Contender]:
    return [Ours("first-server"), Ours("least-busy"), RawAiohttp(), ModelslabPy()]


async def measure(contender: Contender, fake: FakeProcess, jobs: int) -> dict[str, Any]:
    """One measured run: client CPU, wall time, and the fake's CPU over the same run."""
    gc.collect()
    fake_before = fake.stats()["cpu"]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok = await contender.batch(jobs)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    fake_cpu = fake.stats()["cpu"] - fake_before
    return {
        "ok": ok,
        "wall": wall,
        "cpu": cpu,
        "cpu_us_per_job": cpu / jobs * 1e6,
        "jobs_per_s": jobs / wall,
        "fake_cpu_us_per_job": fake_cpu / jobs * 1e6,
    }


async def run_level(
    fake: FakeProcess,
    concurrency: int,
    jobs: int,
    repeats: int,
    warmup: int,
    *,
    diagnostics: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every contender at one concurrency: ``repeats`` interleaved runs each."""
    opened = contenders()
    if diagnostics:
        opened.append(OurTransportOnly())
    for contender in opened:
        await contender.open(fake, concurrency)
        await contender.batch(warmup)
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in opened}
    try:
        for _ in range(repeats):
            for contender in opened:
                runs[contender.name].append(await measure(contender, fake, jobs))
    finally:
        for contender in opened:
            await contender.close()
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "jobs": jobs,
            "concurrency": concurrency,
            "ok_min": min(r["ok"] for r in results),
            "cpu_us_per_job": median([r["cpu_us_per_job"] for r in results]),
            "jobs_per_s": median([r["jobs_per_s"] for r in results]),
            "fake_cpu_us_per_job": median([r["fake_cpu_us_per_job"] for r in results]),
            "runs": results,
        }
    return summary


async def profile_ours(fake: FakeProcess, jobs: int, concurrency: int, routing: str) -> str:
    """cProfile of one batch of our client: the top functions by own time."""
    ours = Ours(routing)
    await ours.open(fake, concurrency)
    await ours.batch(WARMUP)
    profiler = cProfile.Profile()
    profiler.enable()
    await ours.batch(jobs)
    profiler.disable()
    await ours.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    return out.getvalue()


async def main_async(args: argparse.Namespace) -> None:
    jobs = 1000 if args.quick else JOBS
    sweep_jobs = 300 if args.quick else SWEEP_JOBS
    servers = [ServerSpec(f"server-{n}", 64, 0.0) for n in range(1, SERVERS + 1)]
    with FakeProcess(servers) as fake:
        if args.profile:
            print(await profile_ours(fake, jobs, CONCURRENCY, args.profile))
            return
        main = await run_level(fake, CONCURRENCY, jobs, REPEATS, WARMUP, diagnostics=True)
        no_http = await client_only(fake, jobs * 4, CONCURRENCY)
        sweep: dict[str, dict[str, float]] = {}
        if not args.no_sweep:
            for level in SWEEP:
                print(f"  sweep: concurrency {level}", file=sys.stderr)
                results = await run_level(fake, level, sweep_jobs, REPEATS, min(WARMUP, 100))
                for name, result in results.items():
                    sweep.setdefault(name, {})[str(level)] = result["jobs_per_s"]
    floor = main["raw aiohttp"]["cpu_us_per_job"]
    rows = []
    for name, result in main.items():
        ratio = result["cpu_us_per_job"] / floor
        result["cpu_ratio_to_raw"] = ratio
        rows.append(
            [
                name,
                f"{result['ok_min']}/{jobs}",
                f"{result['cpu_us_per_job']:.0f}",
                f"{ratio:.2f}x",
                f"{result['jobs_per_s']:,.0f}",
                f"{result['fake_cpu_us_per_job']:.0f}",
            ]
        )
    print(
        f"\nClient overhead: {jobs} instant jobs, concurrency {CONCURRENCY}, "
        f"{SERVERS} fake servers in another process; median of {REPEATS} runs\n"
    )
    print(
        table(
            ["contender", "ok", "client CPU µs/job", "vs raw", "jobs/s", "fake CPU µs/job"],
            rows,
        )
    )
    ours = main["modelslab-async (first-server)"]["cpu_ratio_to_raw"]
    print(f"\nTarget: our CPU per job <= {TARGET_CPU_RATIO}x raw: {ours:.2f}x")
    print(
        f"\nWithout HTTP (constant in-process answer, {jobs * 4} jobs): our client "
        f"{no_http['ours_cpu_us_per_job']:.1f} µs/job, the raw loop's semaphore + gather + "
        f"json.loads {no_http['raw_cpu_us_per_job']:.1f} µs/job"
    )
    if sweep:
        print("\nThroughput (jobs/s) against concurrency:\n")
        print(
            table(
                ["contender", *(str(level) for level in SWEEP)],
                [[name, *(f"{v:,.0f}" for v in by.values())] for name, by in sweep.items()],
            )
        )
    path = write_result(
        "overhead",
        {
            "jobs": jobs,
            "concurrency": CONCURRENCY,
            "repeats": REPEATS,
            "servers": SERVERS,
            "target_cpu_ratio": TARGET_CPU_RATIO,
            "contenders": main,
            "without_http": no_http,
            "sweep_jobs": sweep_jobs,
            "sweep": sweep,
        },
    )
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer jobs (a smoke run)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the concurrency sweep")
    parser.add_argument(
        "--profile",
        metavar="ROUTING",
        choices=["first-server", "least-busy"],
        help="print a cProfile of our client instead of measuring",
    )
    args = parser.parse_args()
    # modelslab-py calls pydantic's deprecated .dict(); its warning is not ours to show.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
