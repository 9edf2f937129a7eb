"""`FakeModelsLab`: a real HTTP server on loopback that behaves like ModelsLab enterprise."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from aiohttp import web

from ._callbacks import CallbackSender, WebhookAttempt
from ._engine import Engine
from ._faults import Fault
from ._jobs import FakeServerSpec, FakeServerStats
from ._records import ReceivedRequest
from ._rules import check_balance

__all__ = ["FakeModelsLab"]

# How long stop() lets held requests finish before cancelling them.
_SHUTDOWN_GRACE = 0.1


def _default_specs(count: int) -> list[FakeServerSpec]:
    if count < 1:
        raise ValueError(f"servers must be at least 1, got {count}")
    return [FakeServerSpec(f"server-{n}", f"fake-key-{n}") for n in range(1, count + 1)]


def _normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"/{prefix}" if prefix else ""


class FakeModelsLab:
    """A faithful fake of the ModelsLab enterprise img2img API, served over real HTTP.

    Each simulated server has ``slots`` parallel workers and a FIFO queue; jobs finish on a
    fixed schedule. A submit whose job will finish within ``processing_threshold`` seconds is
    held open and answered ``success``; later ones are answered ``processing`` with an
    ``eta`` and are fetched later. Requests with the first server's key are spread over the
    servers that are up, as the documented load balancer does. Faults can be injected and
    servers taken down. Servers have a model list, queues can be limited, the account can run
    out of credits and image URLs can be declared unreachable, each answered with the
    documented error. ``variants`` draws each answer among the documented response shapes.
    Every request is recorded in `received`, without its key.

    Use it as an async context manager::

        async with FakeModelsLab(servers=3) as fake:
            url, keys = fake.base_url, fake.keys
    """

    def __init__(
        self,
        servers: int | Sequence[FakeServerSpec] = 1,
        *,
        processing_threshold: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        api_prefix: str = "/api/v1/enterprise",
        max_records: int | None = 100_000,
        seed: int | None = None,
        queue_limit: int | None = None,
        variants: int | None = None,
        balance: int | None = None,
        unreachable: Iterable[str] = (),
        webhook_drop: float = 0.0,
        webhook_duplicate: float = 0.0,
        webhook_delay: float = 0.0,
    ) -> None:
        """Configure the fake; nothing listens before `start`.

        Args:
            servers: How many servers (named ``server-1``.. with keys ``fake-key-1``..,
                2 slots, 0.05 s per job), or their specs. The first is the balancer's.
            processing_threshold: A job predicted to finish later than this many seconds
                after its submit arrives is answered ``processing`` at once.
            host: The address to listen on.
            port: The port; 0 picks a free one.
            api_prefix: The path prefix of the API routes.
            max_records: How many `ReceivedRequest` records to keep (oldest dropped);
                None keeps all, 0 none.
            seed: Seed of the random generator (jitter, seeds, file names, fault draws).
            queue_limit: How many jobs may wait for a slot on each server whose spec sets
                no ``queue_limit``; further submits get the documented 429 with
                ``retry_after``. None: unlimited.
            variants: Seed of the response variants: each answer is drawn among the
                documented shapes (``message``/``messege``, string ids, ``output: ""``...).
                None: always the same shapes.
            balance: The account's balance in images; a submit needing more is answered
                HTTP 402 "Insufficient credits". None: unlimited.
            unreachable: Hosts (with their subdomains) and URL prefixes whose images "cannot
                be fetched"; hosts under ``.invalid`` never can. Nothing is ever downloaded.
            webhook_drop: The probability that a job's webhook callback is not sent (jobs
                submitted with a ``webhook`` URL are called back when they end, like the real
                service: best effort, no retry). Drawn per job from ``seed``.
            webhook_duplicate: The probability that a callback is sent twice.
            webhook_delay: Seconds between a job's end and its callback.

        .. versionchanged:: 0.1.0
           ``queue_limit``, ``variants``, ``balance``, ``unreachable`` and the ``webhook_``
           options.
        """
        specs = _default_specs(servers) if isinstance(servers, int) else list(servers)
        if not specs:
            raise ValueError("at least one server is needed")
        if not (processing_threshold >= 0 and math.isfinite(processing_threshold)):
            raise ValueError(f"processing_threshold must be >= 0, got {processing_threshold!r}")
        if queue_limit is not None and queue_limit < 0:
            raise ValueError(f"queue_limit must be None or >= 0, got {queue_limit!r}")
        self._specs = specs
        self._host = host
        self._port = port
        self._webhooks = CallbackSender(
            drop=webhook_drop,
            duplicate=webhook_duplicate,
            delay=webhook_delay,
            seed=seed,
            max_records=max_records,
        )
        self._engine = Engine(
            specs,
            processing_threshold=processing_threshold,
            api_prefix=_normalise_prefix(api_prefix),
            max_records=max_records,
            seed=seed,
            queue_limit=queue_limit,
            variants=variants,
            balance=check_balance(balance),
            unreachable=unreachable,
            webhooks=self._webhooks,
        )
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        where = self._engine.root_url or "not started"
        names = ", ".join(spec.name for spec in self._specs)
        return f"<FakeModelsLab {where} servers=[{names}]>"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening.

        Raises:
            RuntimeError: If the fake is already running.
        """
        if self._runner is not None:
            raise RuntimeError("FakeModelsLab is already running")
        engine = self._engine
        runner = web.AppRunner(
            engine.build_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_GRACE,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        engine.clock = self._webhooks.clock = asyncio.get_running_loop().time
        engine.root_url = f"http://{host}:{port}"
        engine.base_url = engine.root_url + engine.prefix

    async def stop(self) -> None:
        """Stop listening; requests still held and callbacks not sent yet are cut off.

        Does nothing if not running.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            await self._webhooks.stop()

    def _require_started(self) -> None:
        if not self._engine.root_url:
            raise RuntimeError("FakeModelsLab is not started; use 'async with' or start()")

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:PORT/api/v1/enterprise``."""
        self._require_started()
        return self._engine.base_url

    @property
    def root_url(self) -> str:
        """The server root URL, e.g. ``http://127.0.0.1:PORT`` (images live under it)."""
        self._require_started()
        return self._engine.root_url

    @property
    def keys(self) -> list[str]:
        """The servers' API keys in order; ``keys[0]`` is the load balancer's key."""
        return [spec.key for spec in self._specs]

    @property
    def specs(self) -> list[FakeServerSpec]:
        """The servers' specs in order."""
        return list(self._specs)

    @property
    def received(self) -> list[ReceivedRequest]:
        """The answered requests in arrival order (the most recent ``max_records``)."""
        return self._engine.recorder.records()

    def clear_received(self) -> None:
        """Forget the recorded requests."""
        self._engine.recorder.clear()

    @property
    def webhooks(self) -> list[WebhookAttempt]:
        """The webhook callbacks sent, dropped, refused or failed, oldest first.

        .. versionadded:: 0.1.0
        """
        return self._webhooks.records()

    def clear_webhooks(self) -> None:
        """Forget the recorded webhook callbacks.

        .. versionadded:: 0.1.0
        """
        self._webhooks.clear()

    async def wait_webhooks(self) -> None:
        """Wait until every callback scheduled so far was sent, dropped or failed.

        .. versionadded:: 0.1.0
        """
        await self._webhooks.wait()

    def stats(self) -> list[FakeServerStats]:
        """Return a snapshot of each server's counters, in server order.

        Returns:
            One `FakeServerStats` per server.
        """
        now = self._engine.clock()
        return [server.stats(now) for server in self._engine.servers]

    def add_fault(self, fault: Fault) -> Fault:
        """Arm a fault after those already armed.

        Args:
            fault: The fault to inject.

        Returns:
            The same fault, for chaining.
        """
        self._engine.faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self._engine.faults.clear()

    def pending_faults(self) -> list[tuple[Fault, int | None]]:
        """Return the faults still armed with their remaining firings (None = unlimited).

        Returns:
            ``(fault, remaining)`` pairs in the order they are checked.
        """
        return self._engine.faults.pending()

    def set_down(self, name: str, down: bool = True) -> None:
        """Take a server down (its gateway answers 502) or bring it back.

        Jobs already accepted keep their schedule; while the server is down they cannot be
        fetched.

        Args:
            name: The server's name.
            down: True to take it down, False to bring it back.

        Raises:
            KeyError: If there is no server with that name.
        """
        try:
            self._engine.by_name[name].down = down
        except KeyError:
            raise KeyError(f"no fake server named {name!r}") from None

    def set_queue_limit(self, name: str, limit: int | None) -> None:
        """Limit how many jobs may wait for a slot on a server (None: unlimited).

        Args:
            name: The server's name.
            limit: The limit.

        Raises:
            KeyError: If there is no server with that name.
            ValueError: If the limit is negative.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"queue_limit must be None or >= 0, got {limit!r}")
        try:
            self._engine.by_name[name].queue_limit = limit
        except KeyError:
            raise KeyError(f"no fake server named {name!r}") from None

    @property
    def balance(self) -> int | None:
        """The account's remaining balance in images; None is unlimited. Settable."""
        return self._engine.account.balance

    @balance.setter
    def balance(self, value: int | None) -> None:
        self._engine.account.balance = check_balance(value)

    def add_unreachable(self, source: str) -> None:
        """Declare a host (with its subdomains) or a URL prefix unreachable for ``init_image``.

        Args:
            source: ``cdn.example.com`` or ``https://example.com/private/``.
        """
        self._engine.sources.add(source)

    def clear_unreachable(self) -> None:
        """Forget the declared hosts and prefixes (``.invalid`` hosts stay unreachable)."""
        self._engine.sources.clear()
