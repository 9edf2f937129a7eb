"""The aiohttp application of the fake: routing, the load balancer, faults and answers."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
from aiohttp import web

from modelslab_async._secrets import fingerprint

from ._bodies import (
    UNAVAILABLE,
    error,
    failed_body,
    fault_response,
    fetch_body,
    gateway_page,
    json_response,
    meta_for,
    processing_body,
    success_body,
)
from ._faults import Fault, FaultBook
from ._jobs import FakeServerSpec, Job, JobBook, ServerSim
from ._png import colour_for, png_bytes
from ._records import Endpoint, RecordDraft, Recorder, safe_body
from ._validation import as_integer, validate_submit

__all__ = ["Engine"]

_NOT_FOUND = "Request not found"
_MODEL_COUNT = 3
# Base64 init images make big bodies; aiohttp's default limit is 1 MiB.
_MAX_BODY = 32 * 1024 * 1024

_Handler = Callable[[web.Request, RecordDraft], Awaitable[web.StreamResponse]]


class _DropConnectionError(Exception):
    """Raised inside a handler to close the connection without any answer."""


class Engine:
    """The state of a fake ModelsLab deployment and the handlers that serve it."""

    def __init__(
        self,
        specs: Sequence[FakeServerSpec],
        *,
        processing_threshold: float,
        api_prefix: str,
        max_records: int | None,
        seed: int | None,
    ) -> None:
        self.servers = [ServerSim(spec, index) for index, spec in enumerate(specs)]
        self.by_name = {server.name: server for server in self.servers}
        self._by_key = {server.spec.key: server for server in self.servers}
        if len(self.by_name) != len(specs) or len(self._by_key) != len(specs):
            raise ValueError("server names and keys must be unique")
        self.threshold = processing_threshold
        self.prefix = api_prefix
        self.rng = random.Random(seed)
        self.jobs = JobBook()
        self.faults = FaultBook()
        self.recorder = Recorder(max_records)
        self._recording = max_records != 0
        self.root_url = ""
        self.base_url = ""
        self.clock: Callable[[], float] = time.monotonic

    def build_app(self) -> web.Application:
        """Return the aiohttp application with every route of the fake."""
        app = web.Application(client_max_size=_MAX_BODY)
        prefix = self.prefix
        router = app.router
        router.add_post(f"{prefix}/img2img", self._submit_route)
        router.add_post(f"{prefix}/images/img2img", self._submit_route)
        router.add_post(f"{prefix}/fetch", self._fetch_route)
        router.add_post(f"{prefix}/fetch/{{request_id}}", self._fetch_route)
        router.add_post(f"{prefix}/images/fetch/{{request_id}}", self._fetch_route)
        router.add_post(f"{prefix}/system_details", self._system_details_route)
        router.add_get("/generations/{name}.png", self._image_route)
        router.add_get("/_fake/stats", self._stats_route)
        router.add_post("/_fake/servers/{name}", self._control_route)
        router.add_route("*", "/{tail:.*}", self._other_route)
        return app

    # Control (not part of the API: for tests that run the fake in another process) ----------

    async def _stats_route(self, request: web.Request) -> web.StreamResponse:
        now = self.clock()
        return json_response([attrs.asdict(server.stats(now)) for server in self.servers])

    async def _control_route(self, request: web.Request) -> web.StreamResponse:
        server = self.by_name.get(request.match_info["name"])
        if server is None:
            return json_response({"status": "error", "message": "no such server"}, 404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("down"), bool):
            return json_response({"status": "error", "message": 'send {"down": true|false}'}, 400)
        server.down = body["down"]
        return json_response({"status": "ok", "server": server.name, "down": server.down})

    # Route entry points -------------------------------------------------------------------

    async def _submit_route(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "submit", self._submit)

    async def _fetch_route(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "fetch", self._fetch)

    async def _system_details_route(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "system_details", self._system_details)

    async def _image_route(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "image", self._image)

    async def _other_route(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "other", self._other)

    async def _serve(
        self, request: web.Request, endpoint: Endpoint, handler: _Handler
    ) -> web.StreamResponse:
        draft = RecordDraft(self.clock(), request.method, request.path, endpoint)
        seq = self.recorder.open()
        try:
            response = await handler(request, draft)
        except _DropConnectionError:
            draft.status = 0
            transport = request.transport
            if transport is not None:
                transport.close()
            # Writing this to the closed transport fails quietly inside aiohttp.
            return web.Response(status=204)
        else:
            draft.status = response.status
            return response
        finally:
            self.recorder.close(seq, draft)

    # Shared steps -------------------------------------------------------------------------

    async def _authenticate(
        self, request: web.Request, draft: RecordDraft
    ) -> tuple[dict[str, Any], str, ServerSim] | web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error("Invalid JSON body. Send a JSON object.")
        if self._recording:
            draft.body = safe_body(body)
        key = body.get("key")
        if key is None or key == "":
            return error("The key field is required.", 401)
        server = self._by_key.get(key) if isinstance(key, str) else None
        if server is None:
            draft.key_fingerprint = fingerprint(str(key))
            return error("Invalid API key", 401)
        draft.key_fingerprint = server.key_fingerprint
        return body, key, server

    def _balance(self) -> ServerSim | None:
        now = self.clock()
        best: ServerSim | None = None
        best_load = float("inf")
        for server in self.servers:
            if not server.down and (load := server.load(now)) < best_load:
                best, best_load = server, load
        return best

    def _pick_fault(
        self, endpoint: str, server: str | None, balanced: bool, draft: RecordDraft
    ) -> Fault | None:
        if not self.faults:
            return None
        fault = self.faults.pick(endpoint, server, balanced, self.rng)
        if fault is not None:
            draft.fault = fault.kind
        return fault

    async def _apply_fault(
        self, fault: Fault | None, *, accept_first: bool = False
    ) -> web.Response | None:
        """Return the answer a fault replaces the normal one with, or None to go on normally."""
        if fault is None:
            return None
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return None
        if fault.kind == "drop":
            if accept_first and fault.after_accept:
                return None
            raise _DropConnectionError
        if fault.kind == "fail":
            return None  # the job is created and fails when it finishes
        return fault_response(fault)

    def _urls(self, job: Job) -> list[str]:
        base = f"{self.root_url}/generations/{job.file_prefix}-"
        return [f"{base}{index}.png" for index in range(job.samples)]

    # Handlers -----------------------------------------------------------------------------

    async def _submit(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        auth = await self._authenticate(request, draft)
        if isinstance(auth, web.Response):
            return auth
        body, key, keyed = auth
        balanced = keyed.index == 0 and body.get("loadbalancer") != "no"
        draft.balanced = balanced
        target = self._balance() if balanced else keyed
        if target is None:
            return error(UNAVAILABLE, 503)
        draft.server = target.name
        if target.down:
            return gateway_page(502)
        target.submits += 1
        fault = self._pick_fault("submit", target.name, balanced, draft)
        answer = await self._apply_fault(fault, accept_first=True)
        if answer is not None:
            return answer
        message = validate_submit(body)
        if message is not None:
            return error(message)
        now = self.clock()
        samples = as_integer(body.get("samples")) or 1
        job = self.jobs.create(
            target, key, balanced=balanced, now=now, samples=samples, rng=self.rng
        )
        draft.request_id = str(job.id)
        if fault is not None and fault.kind == "fail":
            job.failure = fault.message
        if fault is not None and fault.kind == "drop":
            raise _DropConnectionError
        seed = as_integer(body.get("seed"))
        if seed is None:
            seed = self.rng.randrange(2**32)
        meta = meta_for(body, seed, job.file_prefix, job.id)
        urls = self._urls(job)
        wait = job.finish - now
        if wait > self.threshold:
            return json_response(processing_body(job, urls, meta, wait, self.base_url))
        if wait > 0:
            # The GPU keeps working if the client leaves: the job is already scheduled.
            await asyncio.sleep(wait)
        if job.failure is not None:
            return json_response(failed_body(job))
        return json_response(success_body(job, urls, meta))

    async def _fetch(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        auth = await self._authenticate(request, draft)
        if isinstance(auth, web.Response):
            return auth
        body, key, keyed = auth
        request_id = request.match_info.get("request_id", body.get("request_id"))
        if request_id is None or request_id == "":
            return error("The request id field is required.")
        draft.request_id = str(request_id)
        job = self.jobs.get(request_id)
        if job is not None and job.key != key:
            job = None
        target: ServerSim | None
        if job is not None:
            target, balanced = job.server, job.balanced
        else:
            balanced = keyed.index == 0 and body.get("loadbalancer") != "no"
            target = None if balanced else keyed
        draft.balanced = balanced
        if target is not None:
            draft.server = target.name
            if target.down:
                return gateway_page(502)
            target.fetches += 1
        fault = self._pick_fault("fetch", draft.server, balanced, draft)
        answer = await self._apply_fault(fault)
        if answer is not None:
            return answer
        if job is None:
            return error(_NOT_FOUND)
        return json_response(fetch_body(job, self._urls(job), self.clock()))

    async def _system_details(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        auth = await self._authenticate(request, draft)
        if isinstance(auth, web.Response):
            return auth
        server = auth[2]
        draft.server = server.name
        if server.down:
            return gateway_page(502)
        fault = self._pick_fault("system_details", server.name, False, draft)
        answer = await self._apply_fault(fault)
        if answer is not None:
            return answer
        queue_time = round(server.queue_time(self.clock()), 3)
        return json_response(
            {"model_count": _MODEL_COUNT, "queue_time": queue_time, "status": "ok"}
        )

    async def _image(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        found = self.jobs.by_file(request.match_info["name"])
        job, index = found if found is not None else (None, 0)
        if job is not None:
            draft.server = job.server.name
            draft.request_id = str(job.id)
        fault = self._pick_fault("image", draft.server, False, draft)
        answer = await self._apply_fault(fault)
        if answer is not None:
            return answer
        if job is None or job.failure is not None or not job.is_done(self.clock()):
            return web.Response(status=404, text="404: Not Found")
        return web.Response(body=png_bytes(colour_for(job.id, index)), content_type="image/png")

    async def _other(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        fault = self._pick_fault("other", None, False, draft)
        answer = await self._apply_fault(fault)
        if answer is not None:
            return answer
        return error("Not found.", 404)
