"""Run ``python -m modelslab_async.testing serve`` as a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parent.parent.parent
_READY_TIMEOUT = 20.0


@attrs.frozen
class Standalone:
    """A running standalone fake: its URLs, its keys and its output so far."""

    base_url: str
    root_url: str
    keys: tuple[str, ...]
    output: str

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """Call the control endpoint ``/_fake/<path>`` and return its decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
            f"{self.root_url}/_fake/{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return json.loads(answer.read())


def _read_ready(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    output = b""
    deadline = time.monotonic() + _READY_TIMEOUT
    while b"READY " not in output:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            output += chunk
    while b"READY " in output and not output.endswith(b"\n"):
        output += os.read(fd, 4096)
    return output.decode()


@contextmanager
def standalone(*options: str, keys: Sequence[str] = ()) -> Iterator[Standalone]:
    """Start ``serve --port 0 OPTIONS...``; stop it (SIGTERM, then SIGKILL) on the way out."""
    env = {**os.environ}
    env.pop("MODELSLAB_API_KEYS", None)
    if keys:
        env["MODELSLAB_API_KEYS"] = ",".join(keys)
    command = [sys.executable, "-m", "modelslab_async.testing", "serve", "--port", "0", *options]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        output = _read_ready(proc)
        ready = [line for line in output.splitlines() if line.startswith("READY ")]
        if not ready:
            proc.kill()
            _, stderr = proc.communicate(timeout=10)
            message = f"no READY line; output: {output[-1000:]} stderr: {stderr.decode()[-2000:]}"
            raise RuntimeError(message)
        base_url = ready[0].removeprefix("READY ").strip()
        root_url = base_url.split("/api/")[0]
        count = len(keys) or 1
        default_keys = tuple(f"fake-key-{n}" for n in range(1, count + 1))
        yield Standalone(base_url, root_url, tuple(keys) or default_keys, output)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        else:
            proc.communicate()
