"""The command line with Redis: --redis for batch, img2img and servers; enqueue, worker,
results and status, run as subprocesses."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest

from modelslab_async.testing import FakeModelsLab, FakeServerSpec

from ._redis_server import RedisServer
from .cli_fixtures import (
    SECRET_KEYS,
    assert_no_key_leaks,
    cli_env,
    read_records,
    run_cli,
    start_cli,
    write_manifest,
)
from .cli_fixtures import job_line as line


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelsLab]:
    """Two servers; jobs over 0.05 s answer 'processing'."""
    servers = [
        FakeServerSpec("server-1", SECRET_KEYS[0], slots=2, service_time=0.1),
        FakeServerSpec("server-2", SECRET_KEYS[1], slots=2, service_time=0.1),
    ]
    async with FakeModelsLab(servers, processing_threshold=0.05) as server:
        yield server


def env_for(fake: FakeModelsLab, redis: RedisServer | None) -> dict[str, str]:
    extra = {"MODELSLAB_BASE_URL": fake.base_url}
    if redis is not None:
        extra["MODELSLAB_REDIS_URL"] = redis.url
    return cli_env(SECRET_KEYS[:2], **extra)


async def test_batch_img2img_and_servers_share_the_pool_through_redis(
    fake: FakeModelsLab, redis_server: RedisServer, tmp_path: Path
) -> None:
    """--redis (or redis_url in the config) puts the pool's slots in Redis; servers shows
    every route's shared state (holders, cooldown, breaker)."""
    manifest = write_manifest(tmp_path / "m.jsonl", [line(f"j{n}") for n in range(6)])
    env = env_for(fake, None)
    ran = await run_cli(
        "batch", str(manifest), "--out", "r.jsonl", "--redis", redis_server.url,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert 0 == ran.code, ran.stderr
    single = await run_cli(
        "img2img", "--model-id", "realistic-vision-51", "--prompt", "p",
        "--init-image", "https://example.com/a.png", "--redis", redis_server.url,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert 0 == single.code, single.stderr
    config = tmp_path / "c.toml"
    config.write_text(
        f'redis_url = "{redis_server.url}"\n'
        + "".join(f'[[servers]]\nname = "server-{n}"\nkey_env = "K{n}"\n' for n in (1, 2))
    )
    keys = {"K1": SECRET_KEYS[0], "K2": SECRET_KEYS[1]}
    shown = await run_cli("servers", "--config", str(config), env=env | keys, cwd=tmp_path)
    assert 0 == shown.code, shown.stderr
    assert "shared state (Redis, all processes)" in shown.stdout
    assert "holders" in shown.stdout
    as_json = await run_cli("servers", "--json", env=env_for(fake, redis_server), cwd=tmp_path)
    shared = [json.loads(x)["shared"] for x in as_json.stdout.splitlines() if '"shared"' in x]
    assert 2 <= len(shared)
    assert {"server", "holders", "cooldown_left", "breaker", "failures"} == set(shared[0])
    assert_no_key_leaks(ran.stdout, ran.stderr, shown.stdout, as_json.stdout, directory=tmp_path)


async def test_no_redis_is_a_usage_error_that_never_shows_the_url(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    """An unreachable Redis: exit 2, nothing ran, and the password in the URL is not shown."""
    manifest = write_manifest(tmp_path / "m.jsonl", [line("a")])
    url = "redis://:hunter2-secret@127.0.0.1:1/0"
    for args in (("enqueue", str(manifest), "--batch", "b"), ("batch", str(manifest))):
        extra = ("--out", "r.jsonl") if args[0] == "batch" else ()
        ran = await run_cli(*args, *extra, "--redis", url, env=env_for(fake, None), cwd=tmp_path)
        assert 2 == ran.code, ran.stderr
        assert "Redis" in ran.stderr
        assert "hunter2" not in ran.stderr + ran.stdout
    missing = await run_cli("status", "--batch", "b", env=env_for(fake, None), cwd=tmp_path)
    assert 2 == missing.code
    assert "--redis" in missing.stderr


async def test_enqueue_worker_results_status(
    fake: FakeModelsLab, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The commands end to end: a changed line is refused (exit 2, named); two workers run
    the batch; results exits 1 for the bad line and writes it failed; status --json."""
    batch = f"cli-{uuid4().hex[:8]}"
    env = env_for(fake, redis_server)
    jobs = [line(f"j{n}", track_id=f"t-{n}") for n in range(10)]
    manifest = write_manifest(tmp_path / "m.jsonl", [*jobs, "{bad"])
    first = await run_cli("enqueue", str(manifest), "--batch", batch, env=env, cwd=tmp_path)
    assert (0, 11) == (first.code, first.summary()["added"]), first.stderr
    write_manifest(manifest, [*jobs[:3], line("j3", prompt="other"), *jobs[4:], "{bad"])
    changed = await run_cli("enqueue", str(manifest), "--batch", batch, env=env, cwd=tmp_path)
    assert 2 == changed.code
    assert "'j3'" in changed.stderr
    assert "line 4" in changed.stderr
    workers = [
        await start_cli("worker", "--batch", batch, "--images", f"i{n}", env=env, cwd=tmp_path)
        for n in range(2)
    ]
    try:
        ran = [await asyncio.wait_for(w.communicate(), 30) for w in workers]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    assert [0, 0] == [w.returncode for w in workers], [err.decode() for _, err in ran]
    done = [json.loads(out.decode().splitlines()[-1]) for out, _ in ran]
    assert 10 == sum(d["succeeded"] for d in done)
    results = await run_cli("results", "--batch", batch, "--out", "r.jsonl", env=env, cwd=tmp_path)
    assert 1 == results.code
    assert (10, 1, 0) == tuple(results.summary()[k] for k in ("succeeded", "failed", "pending"))
    records = read_records(tmp_path / "r.jsonl")
    assert [*(f"j{n}" for n in range(10)), "11"] == [r["id"] for r in records]
    assert all(Path(tmp_path, r["images"][0]).is_file() for r in records[:10])
    assert {d["worker"] for d in done} >= {r["worker"] for r in records[:10]}
    status = await run_cli("status", "--batch", batch, "--json", env=env, cwd=tmp_path)
    shown = json.loads(status.stdout)
    assert (True, 10, 1) == (
        shown["complete"],
        shown["states"]["succeeded"],
        shown["states"]["failed"],
    )
    table = await run_cli("status", "--batch", batch, "--watch", env=env, cwd=tmp_path)
    assert "11/11 final (complete)" in table.stdout
    assert_no_key_leaks(status.stdout, table.stdout, *(e.decode() for _, e in ran))


async def test_ctrl_c_hands_a_workers_jobs_back(redis_server: RedisServer, tmp_path: Path) -> None:
    """SIGINT: the worker hands its jobs back and exits 130; a new worker finishes them."""
    servers = [FakeServerSpec("server-1", SECRET_KEYS[0], slots=4, service_time=1.0)]
    async with FakeModelsLab(servers, processing_threshold=0.05) as slow:
        batch = f"int-{uuid4().hex[:8]}"
        env = cli_env(
            SECRET_KEYS[:1], MODELSLAB_BASE_URL=slow.base_url, MODELSLAB_REDIS_URL=redis_server.url
        )
        config = tmp_path / "c.toml"
        config.write_text('[[servers]]\nkey_env = "K"\nmax_concurrency = 4\n')
        env["K"] = SECRET_KEYS[0]
        manifest = write_manifest(tmp_path / "m.jsonl", [line(f"j{n}") for n in range(4)])
        await run_cli("enqueue", str(manifest), "--batch", batch, env=env, cwd=tmp_path)
        args = ("worker", "--batch", batch, "--config", str(config))
        worker = await start_cli(*args, env=env, cwd=tmp_path)
        try:
            await asyncio.sleep(1.2)  # started, jobs accepted
            worker.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(worker.communicate(), 15)
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        assert 130 == worker.returncode, err.decode()
        assert 4 == json.loads(out.decode().splitlines()[-1])["handed_back"]
        rerun = await run_cli(*args, env=env, cwd=tmp_path)
        assert 0 == rerun.code, rerun.stderr
        summary = rerun.summary()
        assert (4, 4, 4) == (summary["succeeded"], summary["taken_over"], summary["collected"])
        submits = [r for r in slow.received if r.endpoint == "submit"]
        assert 4 == len(submits)  # accepted jobs were collected, never submitted again
