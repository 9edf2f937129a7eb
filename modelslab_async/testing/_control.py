"""The control endpoint under ``/_fake/``: drive a fake that runs in another process.

Not part of the API. Every answer is JSON and no answer carries a key; POST and DELETE on
faults, the account and unreachable sources answer the new state.

==========================================  =================================================
``GET /_fake/stats``                        each server's counters (`FakeServerStats`)
``POST /_fake/servers/NAME``                ``{"down": bool, "queue_limit": int | null}``
``GET /_fake/faults``                       the armed faults with their remaining firings
``POST /_fake/faults``                      arm a fault: ``{"kind": "busy", "count": 2}``
                                            or ``{"spec": "rate_limit@server-2=0.5"}``
``DELETE /_fake/faults``                    disarm every fault
``GET /_fake/records``                      what the fake received (`ReceivedRequest`)
``DELETE /_fake/records``                   forget it (answers the records it forgot)
``GET|POST /_fake/account``                 ``{"balance": int | null}``
``GET|POST|DELETE /_fake/unreachable``      ``{"source": "HOST or URL prefix"}``
``GET /_fake/webhooks``                     the webhook callbacks (`WebhookAttempt`)
``DELETE /_fake/webhooks``                  forget them (answers the records it forgot)
==========================================  =================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from aiohttp import web

from ._bodies import json_response
from ._callbacks import CallbackSender
from ._faults import FaultBook
from ._faultspec import fault_from_json, fault_from_text, fault_to_json
from ._jobs import ServerSim
from ._records import Recorder
from ._rules import Account, ImageSources, check_balance

__all__ = ["add_control_routes"]


def _problem(message: str, status: int = 400) -> web.Response:
    return json_response({"status": "error", "message": message}, status)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _check_limit(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError(f"queue_limit must be null or a non-negative integer, got {value!r}")


class Engine(Protocol):
    """What the control routes read and change of the fake (the engine, seen from here)."""

    @property
    def clock(self) -> Callable[[], float]:
        """The engine's clock."""
        ...

    @property
    def servers(self) -> Sequence[ServerSim]:
        """The simulated servers."""
        ...

    @property
    def by_name(self) -> Mapping[str, ServerSim]:
        """The servers by name."""
        ...

    @property
    def faults(self) -> FaultBook:
        """The armed faults."""
        ...

    @property
    def recorder(self) -> Recorder:
        """The record of requests."""
        ...

    @property
    def account(self) -> Account:
        """The account's balance."""
        ...

    @property
    def sources(self) -> ImageSources:
        """Which image URLs cannot be fetched."""
        ...

    @property
    def webhooks(self) -> CallbackSender:
        """The webhook callbacks."""
        ...


class _Control:
    """The handlers of the control routes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def stats(self, _: web.Request) -> web.Response:
        now = self.engine.clock()
        return json_response([attrs.asdict(server.stats(now)) for server in self.engine.servers])

    async def server(self, request: web.Request) -> web.Response:
        found = self.engine.by_name.get(request.match_info["name"])
        if found is None:
            return _problem("no such server", 404)
        body = await _json_object(request)
        usage = 'send {"down": true|false} and/or {"queue_limit": N|null}'
        if not body or set(body) - {"down", "queue_limit"}:
            return _problem(usage)
        if "down" in body and not isinstance(body["down"], bool):
            return _problem(usage)
        try:
            limit = _check_limit(body.get("queue_limit", found.queue_limit))
        except ValueError as exc:
            return _problem(str(exc))
        found.down = body.get("down", found.down)
        found.queue_limit = limit
        answer = {"status": "ok", "server": found.name, "down": found.down}
        if "queue_limit" in body:
            answer["queue_limit"] = limit
        return json_response(answer)

    async def faults(self, request: web.Request) -> web.Response:
        book = self.engine.faults
        if request.method == "DELETE":
            book.clear()
        elif request.method == "POST":
            body = await _json_object(request)
            try:
                if body is not None and set(body) == {"spec"} and isinstance(body["spec"], str):
                    fault = fault_from_text(body["spec"])
                else:
                    fault = fault_from_json(body)
            except ValueError as exc:
                return _problem(str(exc))
            book.add(fault)
        return json_response([fault_to_json(fault, left) for fault, left in book.pending()])

    async def records(self, request: web.Request) -> web.Response:
        recorder = self.engine.recorder
        if request.method == "DELETE":
            recorder.clear()
        return json_response([attrs.asdict(record) for record in recorder.records()])

    async def webhooks(self, request: web.Request) -> web.Response:
        sender = self.engine.webhooks
        records = [attrs.asdict(record) for record in sender.records()]
        if request.method == "DELETE":
            sender.clear()
        return json_response(records)

    async def account(self, request: web.Request) -> web.Response:
        account = self.engine.account
        if request.method == "POST":
            body = await _json_object(request)
            if body is None or set(body) != {"balance"}:
                return _problem('send {"balance": N|null}')
            try:
                account.balance = check_balance(body["balance"])
            except ValueError as exc:
                return _problem(str(exc))
        return json_response({"balance": account.balance})

    async def unreachable(self, request: web.Request) -> web.Response:
        sources = self.engine.sources
        if request.method == "DELETE":
            sources.clear()
        elif request.method == "POST":
            body = await _json_object(request)
            source = body.get("source") if body is not None else None
            if not isinstance(source, str) or not source.strip():
                return _problem('send {"source": "HOST or URL prefix"}')
            sources.add(source)
        return json_response({"unreachable": sources.entries})


def add_control_routes(router: web.UrlDispatcher, engine: Engine) -> None:
    """Add the ``/_fake/...`` routes that drive ``engine``."""
    control = _Control(engine)
    router.add_get("/_fake/stats", control.stats)
    router.add_post("/_fake/servers/{name}", control.server)
    for method in ("GET", "POST", "DELETE"):
        router.add_route(method, "/_fake/faults", control.faults)
        router.add_route(method, "/_fake/unreachable", control.unreachable)
    for method in ("GET", "DELETE"):
        router.add_route(method, "/_fake/records", control.records)
        router.add_route(method, "/_fake/webhooks", control.webhooks)
    for method in ("GET", "POST"):
        router.add_route(method, "/_fake/account", control.account)
