"""
Figure 7: GPU runs per job when a server answers only after the client's read timeout.

An enterprise server holds a submit open while it works; when the client's read timeout is
shorter than the job, the answer is lost while the GPU keeps running the job. Every resubmit then
starts one more paid run. This counts the runs the fake started per job (its own record of
submits, matched by ``track_id``), for the retry policies a user can pick, on one server and on
two. Run: ``python benchmarks/bench_retry_storm.py`` (``--library PATH`` measures another
checkout of the library, e.g. an older commit, with its default policy).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--library", help="import modelslab_async from this checkout instead")
    return parser.parse_args()


ARGS = parse()
if ARGS.library:
    sys.path.insert(0, ARGS.library)

from _fakeproc import REQUEST_FIELDS, table, write_result  # noqa: E402 - after --library

from modelslab_async import (  # noqa: E402 - after --library
    Client,
    Img2ImgRequest,
    RetryPolicy,
    Server,
    ServerPool,
    Timeouts,
)
from modelslab_async.testing import FakeModelsLab, FakeServerSpec  # noqa: E402

SERVICE = 0.3  # seconds a job takes on the GPU
READ_TIMEOUT = 0.1  # the client's submit read timeout: shorter than the job


async def measure(servers: int, policy: RetryPolicy | None, jobs: int) -> dict[str, Any]:
    specs = [
        FakeServerSpec(
            name=f"gpu-{n}", key=f"storm-key-{n}-0123456789", slots=jobs, service_time=SERVICE
        )
        for n in range(servers)
    ]
    async with FakeModelsLab(specs, processing_threshold=60) as fake:
        pool = ServerPool(
            [Server(key=spec.key, name=spec.name, max_concurrency=jobs) for spec in specs],
            routing="least-busy",
        )
        timeouts = Timeouts(submit_read=READ_TIMEOUT, job=30)
        kwargs: dict[str, Any] = {"retry": policy} if policy is not None else {}
        async with Client(pool, base_url=fake.base_url, timeouts=timeouts, **kwargs) as client:
            request = Img2ImgRequest(**REQUEST_FIELDS)
            outcomes = await asyncio.gather(
                *(client.img2img(request) for _ in range(jobs)), return_exceptions=True
            )
        await asyncio.sleep(SERVICE)  # let the last runs finish on the fake
        submits = [r for r in fake.received if r.endpoint == "submit"]
    per_job = collections.Counter(str(r.body.get("track_id")) for r in submits)
    same_server = collections.Counter((str(r.body.get("track_id")), r.server) for r in submits)
    return {
        "servers": servers,
        "jobs": jobs,
        "runs": len(submits),
        "runs_per_job": len(submits) / jobs,
        "max_runs_one_job": max(per_job.values()) if "None" not in per_job else None,
        "max_runs_one_job_one_server": max(same_server.values()) if "None" not in per_job else None,
        "succeeded": sum(not isinstance(o, BaseException) for o in outcomes),
    }


def main() -> None:
    policies: dict[str, RetryPolicy | None] = {"default": None}
    if not ARGS.library:
        policies |= {
            "resubmit_after_send=False": RetryPolicy(resubmit_after_send=False),
            "max_resubmits=2": RetryPolicy(max_resubmits=2),
        }
    rows = []
    for name, policy in policies.items():
        for servers in (1, 2):
            row = asyncio.run(measure(servers, policy, ARGS.jobs))
            rows.append({"policy": name, **row})
    label = ARGS.library or "this checkout"
    print(f"library: {label}; job {SERVICE}s, submit read timeout {READ_TIMEOUT}s")
    print(
        table(
            [
                "policy",
                "servers",
                "jobs",
                "GPU runs",
                "runs per job",
                "most on one server",
                "succeeded",
            ],
            [
                [
                    r["policy"],
                    r["servers"],
                    r["jobs"],
                    r["runs"],
                    f"{r['runs_per_job']:.2f}",
                    r["max_runs_one_job_one_server"],
                    r["succeeded"],
                ]
                for r in rows
            ],
        )
    )
    write_result(
        "retry_storm" + ("_library" if ARGS.library else ""), {"library": label, "rows": rows}
    )


if __name__ == "__main__":
    main()
