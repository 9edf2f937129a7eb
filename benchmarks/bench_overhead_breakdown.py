"""
Where our client's extra CPU per job goes: figure 1 taken apart by ablation.

Same setup as `bench_overhead.py` (instant jobs, 4 fake servers in another process,
concurrency 64), but each row adds one of our client's costs to the raw aiohttp loop, or
takes one away from our client (through public settings or a replacement transport: no
library code is patched). Interleaved runs; the median of ``REPEATS`` is reported.

Run: ``python benchmarks/bench_overhead_breakdown.py`` (``--quick``: fewer jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

import aiohttp
from _fakeproc import REQUEST_FIELDS, FakeProcess, ServerSpec, median, table, write_result
from bench_overhead import CONCURRENCY, JOBS, SERVERS, WARMUP, Contender, Ours, OurTransportOnly

from modelslab_async import RawResponse

REPEATS = 5
LAYERS = 8  # coroutine frames between our Dispatcher task and aiohttp, per request


class RawVariant(Contender):
    """The raw loop with one of our client's costs added."""

    def __init__(
        self, name: str, *, deadline: bool = False, layers: int = 0, sock_read: bool = False
    ) -> None:
        self.name = name
        self.deadline = deadline
        self.layers = layers
        self.sock_read = sock_read

    async def open(self, fake: FakeProcess, concurrency: int) -> None:
        from modelslab_async import Img2ImgRequest, request_to_wire  # noqa: PLC0415

        self.session = aiohttp.ClientSession()
        self.url = f"{fake.base_url}/img2img"
        self.body = {**request_to_wire(Img2ImgRequest(**REQUEST_FIELDS)), "key": fake.keys[0]}
        self.concurrency = concurrency

    async def batch(self, jobs: int) -> int:
        semaphore = asyncio.Semaphore(self.concurrency)
        session, url, body = self.session, self.url, self.body
        sock_read = self.sock_read

        async def leaf() -> bool:
            kwargs: dict[str, Any] = {}
            if sock_read:  # what AiohttpTransport passes on every request
                kwargs["timeout"] = aiohttp.ClientTimeout(total=190, sock_connect=10, sock_read=180)
            async with session.post(url, json=body, **kwargs) as response:
                data = json.loads(await response.read())
            return data.get("status") == "success"

        async def layered(depth: int) -> bool:
            if depth == 0:
                return await leaf()
            return await layered(depth - 1)

        async def one() -> bool:
            async with semaphore:
                if self.deadline:  # the per-job deadline of JobRunner._bounded
                    async with asyncio.timeout(900.0):
                        return await layered(self.layers)
                return await layered(self.layers)

        results = await asyncio.gather(*(one() for _ in range(jobs)), return_exceptions=True)
        return sum(r is True for r in results)

    async def close(self) -> None:
        await self.session.close()


class LeanTransport:
    """
    A transport like `AiohttpTransport` but with one ``total`` timeout per request (no
    ``sock_read`` timer re-armed on every chunk), cached ``ClientTimeout`` objects and the
    error mapping inline instead of a generator context manager. No error mapping is needed
    here: the benchmark's answers never fail.
    """

    def __init__(self, limit: int) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._limit = limit
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def post_json(
        self, url: str, body: Mapping[str, Any], *, timeout: float, server: str
    ) -> RawResponse:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit)
            self._session = aiohttp.ClientSession(connector=connector)
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = aiohttp.ClientTimeout(total=timeout + 10, sock_connect=10)
            if len(self._timeouts) < 64:
                self._timeouts[timeout] = client_timeout
        async with self._session.post(url, json=body, timeout=client_timeout) as response:
            data = await response.read()
            headers = response.headers
            wanted = ("retry-after", "retry-after-ms", "content-type")
            return RawResponse(
                response.status, {k: headers[k] for k in wanted if k in headers}, data
            )

    async def get(self, url: str, *, timeout: float) -> RawResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class OursVariant(Ours):
    """Our client with one cost taken away through a public setting or the transport."""

    def __init__(
        self, name: str, *, lean: bool = False, no_deadline: bool = False, no_gc: bool = False
    ) -> None:
        super().__init__("first-server")
        self.name = name
        self.lean = lean
        self.no_deadline = no_deadline
        self.no_gc = no_gc

    async def open(self, fake: FakeProcess, concurrency: int) -> None:
        await super().open(fake, concurrency)
        if self.lean:
            from modelslab_async import Client  # noqa: PLC0415

            await self.client.aclose()
            self.client = Client(
                self.client.pool,
                base_url=fake.base_url,
                transport=LeanTransport(max(100, 2 * concurrency + 8)),
            )
            await self.client.__aenter__()

    async def batch(self, jobs: int) -> int:
        ok = 0
        requests = itertools.repeat(self.request, jobs)
        timeout = None if self.no_deadline else 900.0
        if self.no_gc:
            gc.disable()
        try:
            async for outcome in self.client.img2img_batch(
                requests, concurrency=self.concurrency, job_timeout=timeout
            ):
                ok += outcome.ok
        finally:
            gc.enable()
        return ok


def variants() -> list[Contender]:
    return [
        RawVariant("raw aiohttp"),
        RawVariant("raw + per-job asyncio.timeout", deadline=True),
        RawVariant(f"raw + {LAYERS} coroutine layers", layers=LAYERS),
        RawVariant("raw + per-request ClientTimeout(sock_read=...)", sock_read=True),
        OurTransportOnly(),
        OursVariant("ours (first-server), as shipped"),
        OursVariant("ours, job_timeout=None (no per-job timer)", no_deadline=True),
        OursVariant("ours over LeanTransport", lean=True),
        OursVariant("ours, GC disabled during the batch", no_gc=True),
        OursVariant("ours, all three taken away", lean=True, no_deadline=True, no_gc=True),
    ]


async def main_async(args: argparse.Namespace) -> None:
    jobs = 1000 if args.quick else JOBS
    repeats = 3 if args.quick else REPEATS
    servers = [ServerSpec(f"server-{n}", 64, 0.0) for n in range(1, SERVERS + 1)]
    runs: dict[str, list[float]] = {}
    gens: dict[str, list[int]] = {}
    with FakeProcess(servers) as fake:
        opened = variants()
        for variant in opened:
            await variant.open(fake, CONCURRENCY)
            await variant.batch(WARMUP)
        try:
            for _ in range(repeats):
                for variant in opened:
                    gc.collect()
                    before = gc.get_stats()[0]["collections"]
                    cpu0 = time.process_time()
                    ok = await variant.batch(jobs)
                    cpu = time.process_time() - cpu0
                    if ok != jobs:
                        print(f"  {variant.name}: {ok}/{jobs} ok", file=sys.stderr)
                    runs.setdefault(variant.name, []).append(cpu / jobs * 1e6)
                    gens.setdefault(variant.name, []).append(
                        gc.get_stats()[0]["collections"] - before
                    )
        finally:
            for variant in opened:
                await variant.close()
    raw = median(runs["raw aiohttp"])
    shipped = median(runs["ours (first-server), as shipped"])
    rows, results = [], {}
    for name, values in runs.items():
        value = median(values)
        reference = raw if name.startswith(("raw", "diagnostic")) else shipped
        results[name] = {
            "cpu_us_per_job": value,
            "runs": values,
            "gen0_collections_per_1000_jobs": median(gens[name]) * 1000 / jobs,
        }
        rows.append(
            [
                name,
                f"{value:.1f}",
                f"{value - reference:+.1f}",
                f"{value / raw:.2f}x",
                f"{median(gens[name]) * 1000 / jobs:.0f}",
            ]
        )
    print(
        f"\nOverhead breakdown: {jobs} instant jobs, concurrency {CONCURRENCY}; "
        f"median of {repeats} interleaved runs\n"
    )
    print(
        table(
            [
                "variant",
                "client CPU µs/job",
                "Δ vs raw (raw rows) / vs shipped (ours rows)",
                "vs raw",
                "GC gen-0 runs per 1000 jobs",
            ],
            rows,
        )
    )
    path = write_result(
        "overhead_breakdown",
        {"jobs": jobs, "concurrency": CONCURRENCY, "repeats": repeats, "variants": results},
    )
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer jobs")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
