"""The `batch` command, run as a subprocess against FakeModelsLab: journal, resume, signals."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault

from .cli_fixtures import (
    SECRET_KEYS,
    SIGINT,
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

PNG = b"\x89PNG\r\n\x1a\n"


def specs(service_time: float, slots: int = 2, count: int = 3) -> list[FakeServerSpec]:
    return [
        FakeServerSpec(f"server-{n}", SECRET_KEYS[n - 1], slots=slots, service_time=service_time)
        for n in range(1, count + 1)
    ]


@pytest.fixture
async def quick_fake() -> AsyncIterator[FakeModelsLab]:
    """Three fast servers; jobs longer than 0.1 s answer 'processing'."""
    async with FakeModelsLab(specs(0.15), processing_threshold=0.1, seed=3) as fake:
        yield fake


@pytest.fixture
async def slow_fake() -> AsyncIterator[FakeModelsLab]:
    """Two servers whose jobs take 0.6 s, each answered 'processing' at once."""
    async with FakeModelsLab(specs(0.6, count=2), processing_threshold=0.05, seed=4) as fake:
        yield fake


def submitted_track_ids(records: list[Any]) -> Counter[str]:
    """How many submits the fake received per job (track_id = the manifest id)."""
    return Counter(r.body.get("track_id") for r in records if r.endpoint == "submit")


async def test_full_batch_journals_every_job_once_and_downloads_images(
    quick_fake: FakeModelsLab, tmp_path: Path
) -> None:
    """Every job ends with one succeeded record, its images saved as PNGs named after its id."""
    ids = [f"job-{n}" for n in range(12)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    images = tmp_path / "images"
    ran = await run_cli(
        "batch", str(manifest), "--out", "results.jsonl", "--images", str(images),
        "--routing", "least-busy", "--base-url", quick_fake.base_url,
        env=cli_env(SECRET_KEYS), cwd=tmp_path,
    )  # fmt: skip
    assert 0 == ran.code, ran.stderr
    records = read_records(tmp_path / "results.jsonl")
    finals = finals_by_id(records)
    assert sorted(ids) == sorted(finals)
    assert all(1 == len(found) for found in finals.values())
    assert {"succeeded"} == {found[0]["status"] for found in finals.values()}
    for job_id, (record,) in finals.items():
        assert [str(images / f"{job_id}.png")] == record["images"]
        assert (images / f"{job_id}.png").read_bytes().startswith(PNG)
        assert record["server"] in ("server-1", "server-2", "server-3")
        assert 1 == len(record["output"])
    assert [] == list(images.glob("*.part"))
    summary = ran.summary()
    assert (12, 12, 0, 0) == (
        summary["jobs"],
        summary["succeeded"],
        summary["failed"],
        summary["exit_code"],
    )
    assert 12 == sum(s["jobs"] for s in summary["servers"].values())
    assert "Batch summary" in ran.stderr
    assert 12 == sum(submitted_track_ids(quick_fake.received).values())
    assert_no_key_leaks(ran.stdout, ran.stderr, directory=tmp_path)


async def test_bad_manifest_lines_are_reported_by_line_and_the_others_run(
    quick_fake: FakeModelsLab, tmp_path: Path
) -> None:
    """Bad lines become failed records naming their line; the good ones succeed; exit 1."""
    manifest = write_manifest(
        tmp_path / "jobs.jsonl",
        [
            job_line("a"),
            "{not json",
            {"id": "b", "model_id": "m", "init_image": "https://example.com/x.png"},
            job_line("a"),
            job_line("c", key=SECRET_KEYS[1]),
            "",
            job_line("d", width=999),
            job_line("e"),
            "[1, 2]",
        ],
    )
    ran = await run_cli(
        "batch", str(manifest), "--out", "results.jsonl", "--base-url", quick_fake.base_url,
        env=cli_env(SECRET_KEYS), cwd=tmp_path,
    )  # fmt: skip
    assert 1 == ran.code, ran.stderr
    records = read_records(tmp_path / "results.jsonl")
    bad = {r["line"]: r for r in records if "line" in r}
    assert [2, 3, 4, 5, 7, 9] == sorted(bad)
    assert {"InvalidRequestError"} == {r["error_type"] for r in bad.values()}
    assert ("2", "b", None, "c", "d", "9") == tuple(bad[n]["id"] for n in (2, 3, 4, 5, 7, 9))
    for line, record in bad.items():
        assert f"manifest line {line}:" in record["error"]
        assert f"manifest line {line}:" in ran.stderr
    assert "prompt" in bad[3]["error"]
    assert "repeats the id of line 1" in bad[4]["error"]
    assert "width" in bad[7]["error"]
    good = {r["id"] for r in records if r["status"] == "succeeded"}
    assert {"a", "e"} == good
    summary = ran.summary()
    assert (2, 6, 6) == (summary["succeeded"], summary["failed"], summary["bad_lines"])
    assert {"InvalidRequestError": 6} == summary["failures"]
    assert Counter({"a": 1, "e": 1}) == submitted_track_ids(quick_fake.received)
    assert_no_key_leaks(ran.stdout, ran.stderr, directory=tmp_path, inputs=[manifest])

    again = await run_cli(
        "batch", str(manifest), "--out", "results.jsonl", "--base-url", quick_fake.base_url,
        env=cli_env(SECRET_KEYS), cwd=tmp_path,
    )  # fmt: skip
    assert 1 == again.code
    assert len(records) == len(read_records(tmp_path / "results.jsonl"))
    assert (0, 0, 8) == (
        again.summary()["succeeded"],
        again.summary()["failed"],
        again.summary()["skipped"],
    )


async def test_sigkill_mid_batch_then_restart_loses_nothing_and_resubmits_nothing(
    slow_fake: FakeModelsLab, tmp_path: Path
) -> None:
    """After SIGKILL and a restart every id has one final record; accepted jobs are fetched."""
    ids = [f"k{n:02d}" for n in range(16)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    args = (
        "batch", str(manifest), "--out", "results.jsonl", "--images", "images",
        "--base-url", slow_fake.base_url,
    )  # fmt: skip
    env = cli_env(SECRET_KEYS[:2])
    first = await start_cli(*args, env=env, cwd=tmp_path)

    def finished_some_and_accepted_others(records: list[dict[str, Any]]) -> bool:
        finals = finals_by_id(records)
        pending = {r["id"] for r in records if r["status"] == "accepted"} - set(finals)
        return len(finals) >= 3 and len(pending) >= 2

    await wait_for_records(tmp_path / "results.jsonl", finished_some_and_accepted_others)
    first.kill()
    killed = await finish(first)
    assert -9 == killed.code

    before = read_records(tmp_path / "results.jsonl")
    finals_before = set(finals_by_id(before))
    generated = {r["id"] for r in before if r["status"] == "generated"} - finals_before
    accepted = {r["id"]: r["request_id"] for r in before if r["status"] == "accepted"}
    pending = {
        i: rid for i, rid in accepted.items() if i not in finals_before and i not in generated
    }
    assert pending
    seen = len(slow_fake.received)

    second = await run_cli(*args, env=env, cwd=tmp_path)
    assert 0 == second.code, second.stderr
    after = read_records(tmp_path / "results.jsonl")
    finals = finals_by_id(after)
    assert sorted(ids) == sorted(finals)
    assert all(1 == len(found) for found in finals.values())
    assert all("succeeded" == found[0]["status"] for found in finals.values())
    rerun = slow_fake.received[seen:]
    resubmitted = set(submitted_track_ids(rerun))
    assert set() == resubmitted & (finals_before | generated | set(pending))
    fetched = {r.request_id for r in rerun if r.endpoint == "fetch"}
    assert set(pending.values()) <= fetched
    summary = second.summary()
    assert len(pending) == summary["collected"]
    assert len(finals_before) == summary["skipped"]
    assert all((tmp_path / "images" / f"{i}.png").exists() for i in ids)
    assert_no_key_leaks(
        killed.stdout, killed.stderr, second.stdout, second.stderr, directory=tmp_path
    )


async def test_sigint_stops_cleanly_with_a_summary_and_the_next_run_finishes(
    slow_fake: FakeModelsLab, tmp_path: Path
) -> None:
    """SIGINT exits 130 with a summary; accepted jobs stay journaled and are collected later."""
    ids = [f"i{n:02d}" for n in range(12)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    args = ("batch", str(manifest), "--out", "results.jsonl", "--base-url", slow_fake.base_url)
    env = cli_env(SECRET_KEYS[:2])
    process = await start_cli(*args, env=env, cwd=tmp_path)
    await wait_for_records(
        tmp_path / "results.jsonl", lambda rs: sum(r["status"] == "accepted" for r in rs) >= 2
    )
    process.send_signal(SIGINT)
    ran = await finish(process, timeout=15)
    assert 130 == ran.code, ran.stderr
    assert "Batch interrupted" in ran.stderr
    summary = ran.summary()
    assert (True, 130) == (summary["interrupted"], summary["exit_code"])
    records = read_records(tmp_path / "results.jsonl")
    finals = finals_by_id(records)
    left = {r["id"] for r in records if r["status"] == "accepted"} - set(finals)
    assert left
    seen = len(slow_fake.received)

    again = await run_cli(*args, env=env, cwd=tmp_path)
    assert 0 == again.code, again.stderr
    finals = finals_by_id(read_records(tmp_path / "results.jsonl"))
    assert sorted(ids) == sorted(finals)
    assert all(1 == len(found) for found in finals.values())
    assert set() == set(submitted_track_ids(slow_fake.received[seen:])) & left
    assert_no_key_leaks(ran.stdout, ran.stderr, again.stdout, again.stderr, directory=tmp_path)


async def test_failing_downloads_are_retried_then_recorded_not_fatal(
    quick_fake: FakeModelsLab, tmp_path: Path
) -> None:
    """Transient image errors are retried; a 404 image fails its job only, as a DownloadError."""
    quick_fake.add_fault(Fault.server_error(500, endpoint="image", count=2))
    quick_fake.add_fault(Fault.drop(endpoint="image", count=1))
    quick_fake.add_fault(Fault.server_error(404, endpoint="image", count=1))
    ids = [f"d{n}" for n in range(8)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    ran = await run_cli(
        "batch", str(manifest), "--out", "results.jsonl", "--images", "images",
        "--download-concurrency", "2", "--base-url", quick_fake.base_url,
        env=cli_env(SECRET_KEYS), cwd=tmp_path,
    )  # fmt: skip
    assert 1 == ran.code, ran.stderr
    finals = finals_by_id(read_records(tmp_path / "results.jsonl"))
    assert sorted(ids) == sorted(finals)
    failed = [found[0] for found in finals.values() if found[0]["status"] == "failed"]
    assert 1 == len(failed)
    (broken,) = failed
    assert "DownloadError" == broken["error_type"]
    assert "HTTP 404" in broken["error"]
    assert [None] == broken["images"]
    assert 1 == len(broken["output"])
    assert {"DownloadError": 1} == ran.summary()["failures"]
    assert 7 == len(list((tmp_path / "images").glob("*.png")))
    assert [] == list((tmp_path / "images").glob(".*"))
    assert all(p.read_bytes().startswith(PNG) for p in (tmp_path / "images").glob("*.png"))
    assert 8 == sum(submitted_track_ids(quick_fake.received).values())


async def test_missing_keys_and_unreadable_manifest_exit_2_without_running(tmp_path: Path) -> None:
    """No keys, or a manifest that cannot be read: exit 2, a clear message, no results file."""
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line("x")])
    no_keys = await run_cli("batch", str(manifest), "--out", "r.jsonl", env=cli_env(), cwd=tmp_path)
    assert 2 == no_keys.code
    assert "MODELSLAB_API_KEYS" in no_keys.stderr
    assert "--config" in no_keys.stderr
    missing = await run_cli(
        "batch", "nope.jsonl", "--out", "r.jsonl", env=cli_env(SECRET_KEYS), cwd=tmp_path
    )
    assert 2 == missing.code
    assert "nope.jsonl" in missing.stderr
    assert not (tmp_path / "r.jsonl").exists()
    usage = await run_cli("batch", str(manifest), env=cli_env(SECRET_KEYS), cwd=tmp_path)
    assert 2 == usage.code
    assert "--out" in usage.stderr
    assert_no_key_leaks(no_keys.stderr, missing.stderr, usage.stderr, directory=tmp_path)


async def test_rate_limits_and_dropped_submits_are_absorbed(
    quick_fake: FakeModelsLab, tmp_path: Path
) -> None:
    """A 429 and a connection dropped after the job was accepted do not fail any job."""
    quick_fake.add_fault(Fault.rate_limit(retry_after=0.1))
    quick_fake.add_fault(Fault.drop(after_accept=True))
    ids = [f"r{n}" for n in range(6)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    ran = await run_cli(
        "batch", str(manifest), "--out", "results.jsonl", "--base-url", quick_fake.base_url,
        "--routing", "round-robin", "--verbose",
        env=cli_env(SECRET_KEYS), cwd=tmp_path,
    )  # fmt: skip
    assert 0 == ran.code, ran.stderr
    summary = ran.summary()
    assert (6, 2, 1) == (summary["succeeded"], summary["retries"], summary["possible_duplicates"])
    duplicates = [
        r for r in read_records(tmp_path / "results.jsonl") if r.get("possible_duplicate")
    ]
    assert 1 == len({r["id"] for r in duplicates})
    assert "retry in" in ran.stderr
    assert_no_key_leaks(ran.stdout, ran.stderr, directory=tmp_path)


def test_results_are_json_lines_with_documented_fields(tmp_path: Path) -> None:
    """The results fields scripts rely on are present in a final record."""
    from modelslab_async._cli._journal import Record

    line = json.loads(Record(id="a", status="succeeded", output=("u",), images=("p",)).to_json())
    expected = {
        "id", "status", "request_id", "server", "output", "images", "attempts", "elapsed",
        "possible_duplicate", "error_type", "error", "at",
    }  # fmt: skip
    assert expected == set(line)


async def test_generated_jobs_are_only_downloaded_again_after_a_cut_journal(
    quick_fake: FakeModelsLab, tmp_path: Path
) -> None:
    """Jobs journaled as generated are downloaded, not resubmitted; a cut last line is skipped."""
    ids = [f"g{n}" for n in range(5)]
    manifest = write_manifest(tmp_path / "jobs.jsonl", [job_line(i) for i in ids])
    args = ("batch", str(manifest), "--out", "results.jsonl", "--base-url", quick_fake.base_url)
    first = await run_cli(*args, env=cli_env(SECRET_KEYS), cwd=tmp_path)
    assert 0 == first.code, first.stderr
    generated = [
        {**r, "status": "generated"}
        for r in read_records(tmp_path / "results.jsonl")
        if r["status"] == "succeeded"
    ]
    for record in generated:
        del record["images"], record["error_type"], record["error"]
    lines = [json.dumps(r) for r in generated]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + '\n{"id": "g0", "status": "succ')
    seen = len(quick_fake.received)

    again = await run_cli(*args, "--images", "images", env=cli_env(SECRET_KEYS), cwd=tmp_path)
    assert 0 == again.code, again.stderr
    assert "cut short" in again.stderr
    rerun = quick_fake.received[seen:]
    assert {"image"} == {r.endpoint for r in rerun}
    finals = finals_by_id(read_records(tmp_path / "results.jsonl"))
    assert sorted(ids) == sorted(finals)
    assert all(1 == len(found) and found[0]["images"] for found in finals.values())
    assert 5 == again.summary()["redownloaded"]
    assert all((tmp_path / "images" / f"{i}.png").exists() for i in ids)
