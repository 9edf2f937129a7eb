"""Helpers for the command-line tests: run ``python -m modelslab_async`` against the fake."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parents[2]

#: Keys that look real, so that a leak would be unmistakable.
SECRET_KEYS = (
    "sk-live-9f8e7d6c5b4a39281706-alpha",
    "sk-live-0a1b2c3d4e5f60718293-bravo",
    "sk-live-5e6f7a8b9c0d1e2f3a4b-charlie",
)


@attrs.frozen
class Ran:
    """A finished CLI run."""

    code: int
    stdout: str
    stderr: str

    def summary(self) -> dict[str, Any]:
        """The JSON summary: the last line of stdout."""
        result: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return result


def cli_env(keys: Iterable[str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: no inherited MODELSLAB_* settings, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSLAB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if keys is not None:
        env["MODELSLAB_API_KEYS"] = ",".join(keys)
    env.update(extra)
    return env


async def start_cli(*args: str, env: Mapping[str, str], cwd: Path) -> asyncio.subprocess.Process:
    """Start the CLI as a subprocess with pipes for stdout and stderr."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelslab_async",
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = 45.0) -> Ran:
    """Wait for a started CLI and collect its output."""
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


async def run_cli(*args: str, env: Mapping[str, str], cwd: Path, timeout: float = 45.0) -> Ran:
    """Run the CLI to its end."""
    return await finish(await start_cli(*args, env=env, cwd=cwd), timeout)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file (a cut line is left out, as the CLI does)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    records = []
    for line in text.splitlines(keepends=True):
        if line.strip() and line.endswith("\n"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def finals_by_id(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The final records (succeeded or failed) of each id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["status"] in ("succeeded", "failed"):
            found.setdefault(record["id"], []).append(record)
    return found


async def wait_for_records(
    path: Path, ready: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Poll a results file until ``ready`` holds for its records."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        records = read_records(path)
        if ready(records):
            return records
        await asyncio.sleep(0.02)
    raise AssertionError(f"results never got ready: {read_records(path)}")


def write_manifest(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    """Write a manifest: dicts as JSON lines, strings verbatim."""
    with path.open("w", encoding="utf-8") as stream:
        for line in lines:
            stream.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def job_line(job_id: Any, **fields: Any) -> dict[str, Any]:
    """A valid manifest line whose ``track_id`` is its id (so the fake's records name it)."""
    line: dict[str, Any] = {
        "id": job_id,
        "model_id": "realistic-vision-51",
        "prompt": f"a cat, job {job_id}",
        "init_image": "https://example.com/cat.png",
        "track_id": job_id,
    }
    line.update(fields)
    return line


def assert_no_key_leaks(
    *texts: str, directory: Path | None = None, inputs: Iterable[Path] = ()
) -> None:
    """No key appears in any text, nor in the names or text of files under ``directory``
    (the test's own ``inputs``, which may hold a key on purpose, are not read)."""
    blobs = list(texts)
    skipped = set(inputs)
    if directory is not None:
        for item in directory.rglob("*"):
            blobs.append(str(item))
            if item in skipped:
                continue
            if item.is_file() and item.suffix in (".jsonl", ".json", ".txt"):
                blobs.append(item.read_text(encoding="utf-8", errors="replace"))
    for key in SECRET_KEYS:
        assert all(key not in blob for blob in blobs), "an API key leaked"


SIGINT = signal.SIGINT
