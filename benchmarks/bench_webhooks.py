"""
Figure 9: API calls per job and delay from "result ready" to ``img2img`` returning, with
webhooks on and off.

Queued jobs (0.3 s on the GPU, slots for all, so none waits) on an in-process fake that sends
callbacks like the real service, to a ``WebhookReceiver`` mounted on a loopback aiohttp app.
A job's result is ready when the fake finishes it (its submit's arrival + the service time);
the delay is the time from then until ``img2img`` returns in the same event loop. Targets with
webhooks on: <= 0.3 fetches per job when callbacks arrive, and the result returned within 50 ms
of the callback. Run: ``python benchmarks/bench_webhooks.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))

from _fakeproc import REQUEST_FIELDS, table, write_result

from modelslab_async import Client, Img2ImgRequest, Server, ServerPool, WebhookReceiver
from modelslab_async.testing import FakeModelsLab, FakeServerSpec

SERVICE = 0.3


async def run(mode: str, jobs: int) -> dict[str, Any]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    hooks = WebhookReceiver(f"http://127.0.0.1:{port}/hooks")
    app = web.Application()
    app.add_subapp("/hooks", hooks.aiohttp_app())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener).start()
    specs = [
        FakeServerSpec(
            f"gpu-{n}", f"bench-webhook-key-{n}-000000", slots=jobs, service_time=SERVICE
        )
        for n in range(3)
    ]
    drop = 0.3 if mode == "on, 30% dropped" else 0.0
    returned: dict[str, float] = {}
    try:
        async with FakeModelsLab(
            specs, processing_threshold=0.0, webhook_drop=drop, seed=5
        ) as fake:
            pool = ServerPool(
                [Server(key=s.key, name=s.name, max_concurrency=jobs) for s in specs],
                routing="least-busy",
            )
            webhooks = None if mode == "off" else hooks
            async with Client(pool, base_url=fake.base_url, webhooks=webhooks) as client:
                loop = asyncio.get_running_loop()
                request = Img2ImgRequest(**REQUEST_FIELDS)

                async def one() -> None:
                    result = await client.img2img(request)
                    returned[str(result.track_id)] = loop.time()

                await asyncio.gather(*(one() for _ in range(jobs)))
            records = list(fake.received)
            called = {
                a.track_id: a.at for a in fake.webhooks if a.copy == 1 and a.outcome == "sent"
            }
    finally:
        await runner.cleanup()
    submits = [r for r in records if r.endpoint == "submit"]
    fetches = [r for r in records if r.endpoint == "fetch"]
    delays = [
        (returned[str(r.body["track_id"])] - (r.at + SERVICE)) * 1000
        for r in submits
        if str(r.body.get("track_id")) in returned
    ]
    from_callback = [(returned[t] - at) * 1000 for t, at in called.items() if t in returned]
    return {
        "callback_to_return_ms_p50": statistics.median(from_callback) if from_callback else None,
        "callback_to_return_ms_max": max(from_callback) if from_callback else None,
        "mode": mode,
        "jobs": jobs,
        "api_calls_per_job": (len(submits) + len(fetches)) / jobs,
        "fetches_per_job": len(fetches) / jobs,
        "callbacks_accepted": hooks.stats["accepted"],
        "delay_ms_p50": statistics.median(delays),
        "delay_ms_p95": sorted(delays)[int(0.95 * (len(delays) - 1))],
        "delay_ms_max": max(delays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    rows = [asyncio.run(run(mode, args.jobs)) for mode in ("off", "on", "on, 30% dropped")]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(
        table(
            ["webhooks", "jobs", "calls/job", "fetches/job", "callbacks", "ready→return p50 ms",
             "p95", "max", "callback→return p50 ms", "max"],
            [
                [r["mode"], r["jobs"], f"{r['api_calls_per_job']:.2f}",
                 f"{r['fetches_per_job']:.2f}", r["callbacks_accepted"], ms(r["delay_ms_p50"]),
                 ms(r["delay_ms_p95"]), ms(r["delay_ms_max"]),
                 ms(r["callback_to_return_ms_p50"]), ms(r["callback_to_return_ms_max"])]
                for r in rows
            ],
        )
    )  # fmt: skip
    write_result("webhooks", {"service_time": SERVICE, "rows": rows})


if __name__ == "__main__":
    main()
