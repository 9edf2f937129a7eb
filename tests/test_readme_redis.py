"""The README's "Several processes" example runs as written: two copies at once, one Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from ._redis_server import RedisServer
from .contract.standalone import standalone

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
KEYS = ("sk-readme-redis-gpu-0-0001", "sk-readme-redis-gpu-1-0002")
JOBS = 10  # per process, as the example has it


def the_example() -> str:
    """The one README block that builds a RedisBackend and runs."""
    [code] = [b for b in BLOCKS if "RedisBackend.from_url" in b and "asyncio.run(main())" in b]
    return code


def test_the_readme_has_the_redis_example() -> None:
    """Found without a Redis server, so that a renamed block is noticed everywhere."""
    code = the_example()
    assert "MODELSLAB_REDIS_URL" in code
    assert "MODELSLAB_BASE_URL" in code


def test_the_several_processes_example_runs_in_two_processes_at_once(
    redis_server: RedisServer, redis_api: ModuleType, tmp_path: Path
) -> None:
    """Two copies of the example against a throwaway redis-server and the standalone fake (two
    servers of 8 GPU slots each, jobs answered "processing" and polled): both exit 0 with every
    job done, and the fake's own count of jobs at once on each server never passes the 2 slots
    the example gives each server: the two processes shared them."""
    script = tmp_path / "example.py"
    script.write_text(the_example())
    shapes = ["--server", "gpu-0:8:0.3", "--server", "gpu-1:8:0.3"]
    with standalone(*shapes, "--processing-threshold", "0.1", keys=KEYS) as fake:
        env = {
            **os.environ,
            "MODELSLAB_REDIS_URL": redis_server.url,
            "MODELSLAB_API_KEYS": ",".join(KEYS),
            "MODELSLAB_BASE_URL": fake.base_url,
        }
        procs = [
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            outputs = [proc.communicate(timeout=60) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        stats = fake.control("GET", "stats")
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert 0 == proc.returncode, stderr
        lines = stdout.splitlines()
        done = {line.split()[0] for line in lines if line.startswith(f"{proc.pid}-")}
        assert {f"{proc.pid}-{n}" for n in range(JOBS)} == done, stdout
        assert "failed:" not in stdout
        assert 2 == sum(line.startswith("gpu-") for line in lines), stdout  # the shared states
    assert 2 * JOBS == sum(server["accepted"] for server in stats)
    peaks = {server["name"]: server["max_outstanding"] for server in stats}
    assert all(peak <= 2 for peak in peaks.values()), peaks  # alone, each would send up to 2
    assert 2 == max(peaks.values()), peaks
