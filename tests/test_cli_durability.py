"""The batch journal as it happens: a kill at any moment resubmits no job whose answer arrived."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault

from .cli_fixtures import (
    SECRET_KEYS,
    assert_no_key_leaks,
    cli_env,
    finals_by_id,
    finish,
    job_line,
    read_records,
    run_cli,
    start_cli,
    wait_for_records,
    write_manifest,
)


def fast_specs(count: int = 2, slots: int = 4) -> list[FakeServerSpec]:
    return [
        FakeServerSpec(f"server-{n}", SECRET_KEYS[n - 1], slots=slots, service_time=0.02)
        for n in range(1, count + 1)
    ]


def answered_submits(fake: FakeModelsLab) -> set[str]:
    """The jobs (by track_id) whose submit the fake answered with images."""
    return {
        r.body["track_id"]
        for r in fake.received
        if r.endpoint == "submit" and r.status == 200 and r.body.get("track_id")
    }


def submits(fake: FakeModelsLab, since: int = 0) -> Counter[str]:
    return Counter(r.body.get("track_id") for r in fake.received[since:] if r.endpoint == "submit")


async def wait_until(condition: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_sigkill_during_a_download_backlog_resubmits_no_answered_job(
    tmp_path: Path,
) -> None:
    """Answers are journaled on arrival: SIGKILL with downloads backed up pays for none twice."""
    ids = [f"j{n:02d}" for n in range(40)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    args = (
        "batch", str(manifest), "--out", "results.jsonl", "--images", "images",
        "--concurrency", "8",
    )  # fmt: skip
    env = cli_env(SECRET_KEYS[:2])
    async with FakeModelsLab(fast_specs(), processing_threshold=5.0, seed=5) as fake:
        # A slow image server: every image takes 3 s, one at a time, so downloads back up.
        fake.add_fault(Fault.slow(3.0, endpoint="image", count=None))
        first = await start_cli(
            *args, "--download-concurrency", "1", "--base-url", fake.base_url,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        await wait_until(lambda: len(answered_submits(fake)) >= 20)
        answered = answered_submits(fake)
        await asyncio.sleep(0.5)  # every answer sent so far has reached the CLI by now
        first.kill()
        killed = await finish(first)
        assert -9 == killed.code
        before = read_records(tmp_path / "results.jsonl")
        journaled = {r["id"] for r in before if r["status"] == "generated"}
        assert answered <= journaled
        assert not finals_by_id(before), "no download can have finished yet"
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / ".j00.png.leftover.part").write_bytes(b"half")

        fake.clear_faults()
        seen = len(fake.received)
        second = await run_cli(*args, "--base-url", fake.base_url, env=env, cwd=tmp_path)
        assert 0 == second.code, second.stderr
        resubmitted = submits(fake, seen)
    assert set() == set(resubmitted) & answered
    assert set(resubmitted) == set(ids) - journaled
    finals = finals_by_id(read_records(tmp_path / "results.jsonl"))
    assert sorted(ids) == sorted(finals)
    assert {"succeeded"} == {found[0]["status"] for found in finals.values()}
    assert all(1 == len(found) for found in finals.values())
    assert len(journaled) == second.summary()["redownloaded"]
    assert [] == list((tmp_path / "images").glob("*.part"))
    assert [] == list((tmp_path / "images").glob(".*"))
    assert_no_key_leaks(
        killed.stdout, killed.stderr, second.stdout, second.stderr, directory=tmp_path
    )


async def test_a_submit_cut_by_a_kill_is_resubmitted_and_flagged_possible_duplicate(
    tmp_path: Path,
) -> None:
    """A job whose submit had gone out without an answer is run again, marked possible_duplicate."""
    ids = [f"p{n}" for n in range(4)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    args = ("batch", str(manifest), "--out", "results.jsonl")
    env = cli_env(SECRET_KEYS[:2])
    async with FakeModelsLab(fast_specs(), processing_threshold=5.0, seed=6) as fake:
        fake.add_fault(Fault.slow(30.0, endpoint="submit", count=None))
        first = await start_cli(*args, "--base-url", fake.base_url, env=env, cwd=tmp_path)
        await wait_for_records(
            tmp_path / "results.jsonl",
            lambda rs: {r["id"] for r in rs if r["status"] == "submitted"} == set(ids),
        )
        first.kill()
        assert -9 == (await finish(first)).code

        fake.clear_faults()
        again = await run_cli(*args, "--base-url", fake.base_url, env=env, cwd=tmp_path)
        assert 0 == again.code, again.stderr
    finals = finals_by_id(read_records(tmp_path / "results.jsonl"))
    assert sorted(ids) == sorted(finals)
    assert all(found[0]["possible_duplicate"] for found in finals.values())
    assert len(ids) == again.summary()["possible_duplicates"]


def test_journal_records_round_trip_and_the_index_tracks_submits() -> None:
    """A submitted record with no later answer marks the job as possibly sent."""
    from modelslab_async._cli._journal import JournalIndex, Record

    index = JournalIndex()
    for line in (
        Record(id="a", status="submitted").to_json(),
        Record(id="b", status="submitted").to_json(),
        Record(id="b", status="accepted", request_id="7", server="s").to_json(),
        Record(id="c", status="submitted").to_json(),
        Record(id="c", status="generated", request_id="8", output=("u",)).to_json(),
        Record(id="d", status="accepted", request_id="9", possible_duplicate=True).to_json(),
    ):
        record = Record.from_json(json.loads(line))
        assert record is not None
        index.add(record)
    assert {"a"} == set(index.submitted)
    assert {"b", "d"} == set(index.accepted)
    assert index.accepted["d"].possible_duplicate
    assert not index.accepted["b"].possible_duplicate
    assert {"c"} == set(index.generated)
