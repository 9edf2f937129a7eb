"""The standalone fake can be shaped per server and driven from another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from modelslab_async import Client, ServerError
from modelslab_async.testing import FakeModelsLab, FakeServerSpec

REPO = Path(__file__).parent.parent
SERVE = [sys.executable, "-m", "modelslab_async.testing", "serve", "--port", "0"]


async def test_control_endpoint_takes_a_server_down_and_up() -> None:
    """POST /_fake/servers/NAME {"down": ...} flips a server; GET /_fake/stats shows it, keyless."""
    specs = [
        FakeServerSpec("gpu-a", "sk-control-test-key-a"),
        FakeServerSpec("gpu-b", "sk-control-test-key-b"),
    ]
    async with FakeModelsLab(specs) as fake, aiohttp.ClientSession() as http:
        async with http.post(f"{fake.root_url}/_fake/servers/gpu-b", json={"down": True}) as answer:
            assert {"status": "ok", "server": "gpu-b", "down": True} == await answer.json()
        async with http.get(f"{fake.root_url}/_fake/stats") as answer:
            text = await answer.text()
        assert [False, True] == [server["down"] for server in json.loads(text)]
        assert "sk-control-test-key" not in text
        async with Client(fake.keys[1:], base_url=fake.base_url) as client:
            with pytest.raises(ServerError) as caught:
                await client.system_details()
        assert 502 == caught.value.status_code
        async with http.post(f"{fake.root_url}/_fake/servers/gpu-b", json={"down": False}):
            pass
        async with Client(fake.keys[1:], base_url=fake.base_url) as client:
            assert "ok" == (await client.system_details()).status
        async with http.post(f"{fake.root_url}/_fake/servers/nope", json={"down": True}) as answer:
            assert 404 == answer.status
        async with http.post(
            f"{fake.root_url}/_fake/servers/gpu-a", json={"down": "yes"}
        ) as answer:
            assert 400 == answer.status


def test_serve_with_per_server_shapes() -> None:
    """`serve --server NAME:SLOTS:SECONDS` builds each server as given, keys from the env."""
    env = {**os.environ, "MODELSLAB_API_KEYS": "sk-shape-key-1,sk-shape-key-2"}
    command = [*SERVE, "--server", "fast:4:0.01", "--server", "slow:1:0.5"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("READY "):
                break
        base_url = lines[-1].split()[1]
        root = base_url.split("/api/")[0]
        with urllib.request.urlopen(f"{root}/_fake/stats", timeout=5) as answer:  # noqa: S310
            stats = json.loads(answer.read())
        assert [("fast", 4, 0.01), ("slow", 1, 0.5)] == [
            (s["name"], s["slots"], s["service_time"]) for s in stats
        ]
        assert "sk-shape-key" not in "".join(lines)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_serve_refuses_mismatched_keys() -> None:
    """More --server options than keys is a usage error (exit 2), not a silent default."""
    env = {**os.environ, "MODELSLAB_API_KEYS": "sk-only-one"}
    done = subprocess.run(
        [*SERVE, "--server", "a:1:0.1", "--server", "b:1:0.1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 2 == done.returncode
    assert "1 keys for 2 servers" in done.stderr
    assert "sk-only-one" not in done.stdout + done.stderr
