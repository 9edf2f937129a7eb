"""The `batch` command against hostile manifests and settings, as a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelslab_async.testing import FakeModelsLab, FakeServerSpec

from .cli_fixtures import (
    SECRET_KEYS,
    assert_no_key_leaks,
    cli_env,
    finals_by_id,
    job_line,
    read_records,
    run_cli,
)

URL = "https://example.com/cat.png"
BASE = f'"model_id": "m", "prompt": "p", "init_image": "{URL}"'
#: (line text, the id its failed record has (None: its line number), what its error names)
HOSTILE = [
    ('{"id": "h1", "width": "\u00b2", ' + BASE + "}", "h1", "width"),
    ('{"id": "h2", "width": "--8", ' + BASE + "}", "h2", "width"),
    ('{"id": "h3", "seed": ' + "9" * 5000 + ", " + BASE + "}", None, "is not valid JSON"),
    ('{"id": "h4", "lora_strength": [1], ' + BASE + "}", "h4", "lora_strength"),
    ('{"id": "h5", "samples": ' + "[" * 40 + "]" * 40 + ", " + BASE + "}", None, "nested"),
    ('{"id": "h6", "init_image": "../../etc/passwd", "model_id": "m", "prompt": "p"}', "h6",
     "init_image"),
    ('{"id": "h7", "vae": ' + "[" * 5000 + "]" * 5000 + ", " + BASE + "}", None, "nested"),
    ('{"id": "h8", "key": "' + SECRET_KEYS[0] + '", ' + BASE + "}", "h8", "key"),
]  # fmt: skip


@pytest.fixture
async def fake() -> FakeModelsLab:
    specs = [FakeServerSpec("server-1", SECRET_KEYS[0], slots=8, service_time=0.01)]
    async with FakeModelsLab(specs, processing_threshold=5.0, seed=8) as server:
        yield server  # type: ignore[misc]


async def test_hostile_lines_fail_alone_and_every_other_line_runs_in_one_go(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    """10 good lines, 8 hostile ones, 50 good: 60 succeed, 8 fail naming line and field."""
    good = [json.dumps(job_line(f"g{n:02d}")) for n in range(60)]
    lines = ["\ufeff" + good[0], *good[1:10], *(text for text, _, _ in HOSTILE), *good[10:]]
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ("batch", str(manifest), "--out", "results.jsonl", "--base-url", fake.base_url)
    ran = await run_cli(*args, env=cli_env(SECRET_KEYS[:1]), cwd=tmp_path)
    assert 1 == ran.code, ran.stderr
    finals = finals_by_id(read_records(tmp_path / "results.jsonl"))
    assert 68 == len(finals)
    for number, (_, job, field) in enumerate(HOSTILE, start=11):
        (record,) = finals[job or str(number)]
        assert "failed" == record["status"]
        assert record["line"] == number
        assert f"manifest line {number}:" in record["error"]
        assert field in record["error"], record["error"]
        assert len(record["error"]) < 600
    assert 60 == sum(found[0]["status"] == "succeeded" for found in finals.values())
    again = await run_cli(*args, env=cli_env(SECRET_KEYS[:1]), cwd=tmp_path)
    assert (1, 68) == (again.code, again.summary()["skipped"])
    assert_no_key_leaks(ran.stdout, ran.stderr, again.stderr, directory=tmp_path, inputs=[manifest])


@pytest.mark.parametrize(
    "url",
    ["http://", "http:///api", "ftp://example.com", "example.com/api", "http://h:99999/x",
     "https://user:pw@example.com/api", "http://exa mple.com"],
)  # fmt: skip
async def test_bad_base_urls_exit_2_before_anything_runs(tmp_path: Path, url: str) -> None:
    """A base URL without a host, with a bad port or credentials: exit 2, no results file."""
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(json.dumps(job_line("a")) + "\n")
    ran = await run_cli(
        "batch", str(manifest), "--out", "r.jsonl", "--base-url", url,
        env=cli_env(SECRET_KEYS[:1]), cwd=tmp_path,
    )  # fmt: skip
    assert 2 == ran.code, ran.stderr
    assert "base_url" in ran.stderr
    assert "pw@" not in ran.stderr
    assert not (tmp_path / "r.jsonl").exists()
