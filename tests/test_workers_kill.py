"""A batch over many processes survives SIGKILLs: one final record per job, and no job a server
accepted is ever submitted again (the fake's own record says so)."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest

from ._redis_server import RedisServer
from .cli_fixtures import (
    SECRET_KEYS,
    assert_no_key_leaks,
    cli_env,
    finish,
    read_records,
    run_cli,
    start_cli,
    write_manifest,
)

JOBS = 600
WORKERS = 3
RECLAIM_AFTER = 1.5
FAKE_SERVERS = ("server-1:4:0.15", "server-2:4:0.1", "server-3:2:0.3")


@pytest.fixture
async def standalone_fake(tmp_path: Path) -> AsyncIterator[str]:
    """The fake API in its own process (jobs over 50 ms answer 'processing'); its base URL."""
    args = [f"--server={spec}" for spec in FAKE_SERVERS]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelslab_async.testing", "serve", "--port", "0",
        "--processing-threshold", "0.05", *args,
        env=cli_env(SECRET_KEYS), cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(15):
            while not (line := (await process.stdout.readline()).decode()).startswith("READY"):
                assert line, "the fake exited before READY"
        yield line.split()[1]
    finally:
        process.terminate()
        await process.wait()


def job_lines(count: int) -> list[dict[str, Any]]:
    """Valid manifest lines without a track_id: each job then gets its batch's stable one."""
    return [
        {
            "id": f"sku-{n}",
            "model_id": "realistic-vision-51",
            "prompt": f"product {n}",
            "init_image": "https://example.com/p.png",
        }
        for n in range(count)
    ]


async def fake_records(base_url: str) -> list[dict[str, Any]]:
    """The fake's own record of every request it received."""
    root = base_url.split("/api/", maxsplit=1)[0]
    async with aiohttp.ClientSession() as session, session.get(f"{root}/_fake/records") as got:
        records: list[dict[str, Any]] = await got.json()
    return records


@pytest.mark.timeout(180)  # three worker processes: minutes on a loaded 2-core machine
async def test_600_jobs_three_workers_one_killed_twice(
    redis_server: RedisServer, standalone_fake: str, tmp_path: Path, redis_api: Any
) -> None:
    """Three workers, one SIGKILLed twice mid-run and restarted: 600 final records, 600 ids,
    and no job submitted again after a server accepted it; double submits (the worker died
    mid-submit) are all flagged possible_duplicate."""
    batch = f"kill-{uuid4().hex[:8]}"
    env = cli_env(
        SECRET_KEYS, MODELSLAB_REDIS_URL=redis_server.url, MODELSLAB_BASE_URL=standalone_fake
    )
    manifest = write_manifest(tmp_path / "jobs.jsonl", job_lines(JOBS))
    enqueued = await run_cli("enqueue", str(manifest), "--batch", batch, env=env, cwd=tmp_path)
    assert 0 == enqueued.code, enqueued.stderr
    assert JOBS == enqueued.summary()["added"]

    config = tmp_path / "servers.toml"
    config.write_text(
        'routing = "least-busy"\n'
        + "".join(
            f'[[servers]]\nname = "server-{n}"\nkey_env = "KEY_{n}"\nmax_concurrency = {slots}\n'
            for n, slots in ((1, 4), (2, 4), (3, 2))
        )
    )
    env |= {f"KEY_{n}": key for n, key in enumerate(SECRET_KEYS, start=1)}

    def worker(n: int) -> Any:
        return start_cli(
            "worker", "--batch", batch, "--config", str(config), "--concurrency", "8",
            "--images", f"images-{n}", "--reclaim-after", str(RECLAIM_AFTER),
            env=env, cwd=tmp_path,
        )  # fmt: skip

    workers = [await worker(n) for n in range(WORKERS)]
    rng = random.Random()
    killed = []
    try:
        for pause in (rng.uniform(1.0, 2.5), rng.uniform(1.5, 3.0)):
            await asyncio.sleep(pause)
            victim = workers[0]
            victim.send_signal(signal.SIGKILL)
            killed.append(await finish(victim))
            workers[0] = await worker(0)
        ran = [await finish(process, timeout=100) for process in workers]
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [-signal.SIGKILL] * 2 == [run.code for run in killed]
    assert [0] * WORKERS == [run.code for run in ran], [run.stderr[-2000:] for run in ran]
    summaries = [run.summary() for run in ran]
    taken_over = sum(s["taken_over"] for s in summaries)
    assert taken_over > 0  # the killed worker's jobs were reclaimed by the others

    results = await run_cli(
        "results", "--batch", batch, "--out", "results.jsonl", env=env, cwd=tmp_path
    )
    assert 0 == results.code, results.stdout + results.stderr
    records = read_records(tmp_path / "results.jsonl")
    assert JOBS == len(records)
    assert JOBS == len({record["id"] for record in records})
    assert {"succeeded"} == {record["status"] for record in records}
    assert all(Path(record["images"][0]).is_file() for record in records)

    # The fake's view: submits per track_id (each job's is stable: batch + id).
    track = {redis_api.track_id_for(batch, record["id"]): record for record in records}
    submits: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for request in await fake_records(standalone_fake):
        if request["endpoint"] == "submit":
            submits[request["body"]["track_id"]].append(request)
    assert set(track) == set(submits)
    twice = {tid: sent for tid, sent in submits.items() if len(sent) > 1}
    # A job the ledger recorded as accepted is never submitted again: its final record keeps
    # the first accepted request id. A job submitted twice was cut mid-submit (the one
    # ambiguous case) and says possible_duplicate.
    accepted_again = [tid for tid, sent in twice.items() if not track[tid]["possible_duplicate"]]
    assert [] == accepted_again
    for tid, record in track.items():
        first_accepted = next((s["request_id"] for s in submits[tid] if s["request_id"]), None)
        if tid not in twice:
            assert first_accepted == record["request_id"]
    print(
        json.dumps(
            {
                "jobs": JOBS,
                "taken_over": taken_over,
                "collected": sum(s["collected"] for s in summaries),
                "double_submits_flagged": len(twice),
                "accepted_again": 0,
            }
        )
    )
    assert_no_key_leaks(
        results.stdout, *(run.stderr for run in ran), directory=tmp_path, inputs=[manifest]
    )
