"""The `img2img`, `servers` and `demo` commands, and configuration, run as subprocesses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelslab_async.testing import FakeModelsLab, FakeServerSpec

from .cli_fixtures import (
    SECRET_KEYS,
    assert_no_key_leaks,
    cli_env,
    finals_by_id,
    read_records,
    run_cli,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelsLab]:
    """Two servers with secret-looking keys; jobs over 0.1 s answer 'processing'."""
    servers = [
        FakeServerSpec("server-1", SECRET_KEYS[0], service_time=0.05),
        FakeServerSpec("server-2", SECRET_KEYS[1], service_time=0.3),
    ]
    async with FakeModelsLab(servers, processing_threshold=0.1, seed=5) as server:
        yield server


async def test_img2img_runs_one_job_and_saves_its_images(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    """One job's result is printed as JSON and its two images are saved under --out."""
    ran = await run_cli(
        "img2img", "--model-id", "realistic-vision-51", "--prompt", "a cat",
        "--init-image", "https://example.com/cat.png", "--samples", "2", "--strength", "0.6",
        "--width", "512", "--height", "512", "--steps", "31", "--seed", "7",
        "--negative-prompt", "blurry", "--out", "out", "--base-url", fake.base_url,
        env=cli_env(SECRET_KEYS[:2]), cwd=tmp_path,
    )  # fmt: skip
    assert 0 == ran.code, ran.stderr
    result = json.loads(ran.stdout)
    assert "succeeded" == result["status"]
    assert 2 == len(result["output"]) == len(result["images"])
    assert all(Path(path).read_bytes().startswith(b"\x89PNG") for path in result["images"])
    (submit,) = [r for r in fake.received if r.endpoint == "submit"]
    assert ("2", 0.6, "blurry") == (
        str(submit.body["samples"]),
        submit.body["strength"],
        submit.body["negative_prompt"],
    )
    assert "done" in ran.stderr
    assert_no_key_leaks(ran.stdout, ran.stderr, directory=tmp_path)


async def test_img2img_with_a_bad_field_exits_2_before_sending(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    """An out-of-range field is reported by name; nothing reaches the server."""
    ran = await run_cli(
        "img2img", "--model-id", "m", "--prompt", "p", "--init-image",
        "https://example.com/cat.png", "--steps", "30", "--base-url", fake.base_url,
        env=cli_env(SECRET_KEYS[:2]), cwd=tmp_path,
    )  # fmt: skip
    assert 2 == ran.code
    assert "num_inference_steps" in ran.stderr
    assert [] == fake.received


async def test_servers_shows_system_details_and_health_from_a_config_file(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    """Keys from a config file (inline and key_env); each server's status, never its key."""
    config = tmp_path.parent / f"{tmp_path.name}-modelslab.toml"
    config.write_text(
        f'base_url = "{fake.base_url}"\nrouting = "least-busy"\n'
        f'[[servers]]\nname = "alpha"\nkey = "{SECRET_KEYS[0]}"\nmax_concurrency = 3\n'
        '[[servers]]\nname = "bravo"\nkey_env = "BRAVO_KEY"\n'
    )
    config.chmod(0o600)
    env = cli_env(BRAVO_KEY=SECRET_KEYS[1])
    ran = await run_cli("servers", "--config", str(config), "--json", env=env, cwd=tmp_path)
    assert 0 == ran.code, ran.stderr
    rows = [json.loads(line) for line in ran.stdout.splitlines()]
    assert ["alpha", "bravo"] == [row["name"] for row in rows]
    assert ["ok", "ok"] == [row["status"] for row in rows]
    assert [3, 2] == [row["capacity"] for row in rows]
    assert all(row["key"].startswith("key-") for row in rows)
    table = await run_cli("servers", "--config", str(config), env=env, cwd=tmp_path)
    assert 0 == table.code
    assert "alpha" in table.stdout
    assert "least-busy" in table.stdout
    assert_no_key_leaks(ran.stdout, ran.stderr, table.stdout, table.stderr)


async def test_servers_reports_an_unreachable_server_with_exit_1(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    """A server whose gateway answers 502 is shown as unreachable, and the exit status is 1."""
    fake.set_down("server-2")
    ran = await run_cli(
        "servers", "--json", "--base-url", fake.base_url,
        env=cli_env(SECRET_KEYS[:2]), cwd=tmp_path,
    )  # fmt: skip
    assert 1 == ran.code
    rows = {row["name"]: row for row in map(json.loads, ran.stdout.splitlines())}
    assert ("ok", "unreachable") == (rows["server-1"]["status"], rows["server-2"]["status"])
    assert "ServerError" in rows["server-2"]["error"]


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ('[[servers]]\nname = "a"\n', "exactly one of key and key_env"),
        ('[[servers]]\nkey_env = "NOT_SET_ANYWHERE"\n', "NOT_SET_ANYWHERE is not set"),
        (f'[[servers]]\nkey = "{SECRET_KEYS[2]}"\nmax_concurrency = 0\n', "max_concurrency"),
        (f'[[servers]]\nkey = "{SECRET_KEYS[2]}"\ncolour = "red"\n', "unknown field(s) colour"),
        (f'[[servers]]\nkey = "{SECRET_KEYS[2]}\n', "not valid TOML"),
        (f'routing = "random"\n[[servers]]\nkey = "{SECRET_KEYS[2]}"\n', "not a routing mode"),
        ("servers = []\n", "MODELSLAB_API_KEYS"),
    ],
)
async def test_a_bad_config_exits_2_and_never_echoes_a_key(
    tmp_path: Path, config_text: str, expected: str
) -> None:
    """Each config mistake is named; the key in the file is not repeated."""
    config = tmp_path / "bad.toml"
    config.write_text(config_text)
    config.chmod(0o600)
    ran = await run_cli("servers", "--config", str(config), env=cli_env(), cwd=tmp_path)
    assert 2 == ran.code
    assert expected in ran.stderr
    assert_no_key_leaks(ran.stdout, ran.stderr)


async def test_a_config_with_inline_keys_readable_by_others_is_warned_about(
    fake: FakeModelsLab, tmp_path: Path
) -> None:
    """Inline keys in a world-readable file draw a warning (naming the file, not the key)."""
    config = tmp_path / "open.toml"
    config.write_text(f'base_url = "{fake.base_url}"\n[[servers]]\nkey = "{SECRET_KEYS[0]}"\n')
    config.chmod(0o644)
    ran = await run_cli("servers", "--config", str(config), env=cli_env(), cwd=tmp_path)
    assert 0 == ran.code
    assert "readable by other users" in ran.stderr
    assert_no_key_leaks(ran.stdout, ran.stderr)


async def test_demo_runs_a_resilient_batch_and_says_where_the_results_are(tmp_path: Path) -> None:
    """The demo finishes quickly; its results show the injected faults were absorbed."""
    demo = tmp_path / "demo"
    ran = await run_cli("demo", env=cli_env(MODELSLAB_DEMO_DIR=str(demo)), cwd=tmp_path, timeout=50)
    assert 0 == ran.code, ran.stderr
    assert str(demo / "results.jsonl") in ran.stdout
    finals = finals_by_id(read_records(demo / "results.jsonl"))
    assert 30 == len(finals)
    assert all(1 == len(found) for found in finals.values())
    summary = json.loads((demo / "summary.json").read_text())
    assert {"DownloadError": 1} == summary["failures"]
    assert 29 == summary["succeeded"]
    assert summary["retries"] >= 3
    assert 1 <= summary["possible_duplicates"]
    assert {"fast", "slow", "flaky"} == set(summary["servers"])
    assert summary["wall_time"] < 30
    statuses = {r["status"] for r in read_records(demo / "results.jsonl")}
    assert {"submitted", "accepted", "generated", "succeeded", "failed"} == statuses
    assert "Batch summary" in ran.stderr


async def test_version_and_help_exit_0_and_no_command_exits_2(tmp_path: Path) -> None:
    """`--version` and `--help` succeed; a missing command is a usage error."""
    version = await run_cli("--version", env=cli_env(), cwd=tmp_path)
    assert 0 == version.code
    assert version.stdout.startswith("modelslab-async ")
    helped = await run_cli("batch", "--help", env=cli_env(), cwd=tmp_path)
    assert 0 == helped.code
    assert "exit status:" in helped.stdout
    assert "130" in helped.stdout
    bare = await run_cli(env=cli_env(), cwd=tmp_path)
    assert 2 == bare.code
