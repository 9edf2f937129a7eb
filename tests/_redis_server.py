"""
Throwaway ``redis-server`` processes for the Redis backend's tests (and its benchmark).

The session fixture starts one on a free loopback port, with no persistence, in a temporary
directory, and stops it at the end. Without ``redis-server`` the tests that need it are skipped
with one line saying why; under ``CI=true`` a missing server is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import pytest

if TYPE_CHECKING:
    from modelslab_async.redis import RedisBackend

__all__ = [
    "RedisServer",
    "make_backend",
    "pytest_runtest_makereport",
    "raw_redis",
    "redis_api",
    "redis_server",
    "spare_redis",
]

START_TIMEOUT = 10.0
MISSING = (
    "redis-server is not installed (apt-get install redis-server): Redis backend tests skipped"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """
    One ``redis-server`` child process on 127.0.0.1; ``stop()`` and ``start()`` again keep the
    port, so a test can make Redis disappear and come back. Use as a context manager.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self._process is not None:
            return
        log = self.directory / f"redis-{self.port}.log"
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(log),
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); nothing to do if it is not running."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def redis_server_executable() -> str:
    """The ``redis-server`` path; skips the test without it, fails it under ``CI=true``."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but redis-server is not installed: .ci/run installs it")
        pytest.skip(MISSING)
    return executable


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Report every "no redis-server" skip from one place, so ``-ra`` folds them into one line."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and MISSING in str(longrepr[2]):
        report.longrepr = (__file__, None, longrepr[2])
    return report


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole session, on a free loopback port, stopped at the end."""
    executable = redis_server_executable()
    with tempfile.TemporaryDirectory(prefix="redis-test-") as directory:
        with RedisServer(executable, Path(directory)) as server:
            yield server


@pytest.fixture
def spare_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A second redis-server of the test's own, which the test may stop and start again."""
    executable = redis_server_executable()
    with RedisServer(executable, tmp_path) as server:
        yield server


@pytest.fixture
def redis_api() -> ModuleType:
    """``modelslab_async.redis``, imported when a test needs it (not at collection time)."""
    pytest.importorskip("redis", reason="redis-py is not installed (pip install -e '.[dev]')")
    import modelslab_async.redis

    return modelslab_async.redis


MakeBackend = Callable[..., "RedisBackend"]


@pytest.fixture
async def make_backend(
    redis_server: RedisServer, redis_api: ModuleType
) -> AsyncIterator[MakeBackend]:
    """
    Build RedisBackends on the session's server (``url=`` for another one) in a namespace of
    the test's own (unless ``namespace=`` is given); all are closed at the end of the test.
    """
    namespace = f"test-{uuid4().hex[:10]}"
    made: list[RedisBackend] = []

    def make(url: str | None = None, **options: Any) -> RedisBackend:
        options.setdefault("namespace", namespace)
        backend: RedisBackend = redis_api.RedisBackend.from_url(url or redis_server.url, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


@pytest.fixture
async def raw_redis(redis_server: RedisServer, redis_api: ModuleType) -> AsyncIterator[Any]:
    """A plain ``redis.asyncio.Redis`` on the session's server, to look at what is stored."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
