"""
Shared helpers of the benchmarks: the fake API in a separate process, results, timing.

`FakeProcess` starts ``benchmarks/_fake_server.py`` (a `FakeModelsLab` with per-server specs
and a stdin control channel) as a child process, with freshly generated fake keys passed in
``MODELSLAB_API_KEYS`` (never printed), waits for its ``READY <base_url>`` line and stops it
by closing its stdin. The fake runs on its own core, so the client's CPU time measured in
this process is the client's alone.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SERVER_SCRIPT = HERE / "_fake_server.py"
READY_TIMEOUT = 30.0

# One request, the same for every contender (a URL init image: no base64 in the bodies).
REQUEST_FIELDS: dict[str, Any] = {
    "model_id": "realistic-vision-51",
    "prompt": "a watercolor fox in the snow",
    "init_image": "https://example.com/fox.png",
    "strength": 0.7,
    "num_inference_steps": 31,
    "width": 512,
    "height": 512,
}


@frozen
class ServerSpec:
    """One fake server: name, GPU slots, seconds per job."""

    name: str
    slots: int
    service_time: float


class FakeProcess:
    """
    A `FakeModelsLab` in a child process. Use as a context manager.

    Attributes:
        base_url: The API base URL, once started.
        keys: The servers' fake keys, in order (the first is the load balancer's).
    """

    def __init__(
        self,
        servers: Sequence[ServerSpec],
        *,
        processing_threshold: float = 1.0,
        max_records: int = 0,
        seed: int = 0,
    ) -> None:
        self.servers = list(servers)
        self.keys = [f"bench-{secrets.token_hex(12)}" for _ in self.servers]
        self._args = [
            sys.executable,
            str(SERVER_SCRIPT),
            "--config",
            json.dumps(
                [
                    {"name": s.name, "slots": s.slots, "service_time": s.service_time}
                    for s in servers
                ]
            ),
            "--processing-threshold",
            str(processing_threshold),
            "--max-records",
            str(max_records),
            "--seed",
            str(seed),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.base_url = ""

    def __enter__(self) -> FakeProcess:
        env = {**os.environ, "MODELSLAB_API_KEYS": ",".join(self.keys)}
        self._proc = subprocess.Popen(
            self._args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            bufsize=1,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the fake exited with {self._proc.wait()} before READY")
            if line.startswith("READY "):
                self.base_url = line.split(" ", 1)[1].strip()
                return self
        self._stop()
        raise RuntimeError("the fake did not print READY in time")

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the fake stops at EOF
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)

    @property
    def pid(self) -> int:
        """The fake's process id."""
        assert self._proc is not None
        return self._proc.pid

    def command(self, **command: Any) -> dict[str, Any]:
        """Send one control command and return the reply (blocking; thread-safe)."""
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        assert proc.stdout is not None
        with self._lock:
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("the fake exited")
                if line.startswith("REPLY "):
                    reply: dict[str, Any] = json.loads(line[6:])
                    if "error" in reply:
                        raise RuntimeError(reply["error"])
                    return reply

    def set_down(self, name: str, value: bool = True) -> float:
        """Take a server down (or up); returns the fake's monotonic time of the change."""
        return float(self.command(cmd="down", name=name, value=value)["t"])

    def stats(self) -> dict[str, Any]:
        """The fake's per-server counters, its clock and its own CPU seconds."""
        return self.command(cmd="stats")

    def records(self) -> list[dict[str, Any]]:
        """What the fake received (needs ``max_records`` > 0)."""
        return list(self.command(cmd="records")["records"])


def library_commit() -> str | None:
    """The git commit of the library measured, ``+dirty`` when modelslab_async/ has changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "modelslab_async"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import aiohttp  # noqa: PLC0415

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "library_commit": library_commit(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def median(values: Sequence[float]) -> float:
    """The median (for 3 repeats, the middle one)."""
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
