"""The aiohttp application of the fake: routing, the load balancer, faults and answers."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiohttp import web

from modelslab_async._secrets import fingerprint

from ._admin import ADMIN_ENDPOINTS, admin_answer, model_not_found
from ._bodies import (
    INSUFFICIENT_CREDITS,
    UNAVAILABLE,
    UNFETCHABLE_IMAGE,
    error,
    failed_body,
    fault_response,
    fetch_body,
    gateway_page,
    json_response,
    meta_for,
    processing_body,
    rate_limited,
    success_body,
)
from ._callbacks import CallbackSender
from ._control import add_control_routes
from ._faults import Fault, FaultBook
from ._jobs import FakeServerSpec, Job, JobBook, ServerSim
from ._png import colour_for, png_bytes
from ._records import Endpoint, RecordDraft, Recorder, safe_body
from ._rules import Account, ImageSources
from ._validation import as_flag, as_integer, validate_submit
from ._variants import AnswerKind, Variants, shape

__all__ = ["Engine"]

_NOT_FOUND = "Request not found"
# Base64 init images make big bodies; aiohttp's default limit is 1 MiB.
_MAX_BODY = 32 * 1024 * 1024
_ADMIN_PATTERN = "|".join(ADMIN_ENDPOINTS)

_Handler = Callable[[web.Request, RecordDraft], Awaitable[web.StreamResponse]]
_Auth = tuple[dict[str, Any], str, ServerSim]


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
        queue_limit: int | None = None,
        variants: int | None = None,
        balance: int | None = None,
        unreachable: Iterable[str] = (),
        webhooks: CallbackSender | None = None,
    ) -> None:
        self.servers = [ServerSim(spec, index) for index, spec in enumerate(specs)]
        self.by_name = {server.name: server for server in self.servers}
        self._by_key = {server.spec.key: server for server in self.servers}
        if len(self.by_name) != len(specs) or len(self._by_key) != len(specs):
            raise ValueError("server names and keys must be unique")
        for server in self.servers:
            if server.queue_limit is None:
                server.queue_limit = queue_limit
        self.threshold = processing_threshold
        self.prefix = api_prefix
        self.rng = random.Random(seed)
        self.variants = Variants(variants)
        self.account = Account(balance)
        self.sources = ImageSources(unreachable)
        self.jobs = JobBook()
        self.faults = FaultBook()
        self.recorder = Recorder(max_records)
        if webhooks is None:
            webhooks = CallbackSender(seed=seed, max_records=max_records)
        self.webhooks = webhooks
        self._recording = max_records != 0
        self.root_url = ""
        self.base_url = ""
        self.clock: Callable[[], float] = time.monotonic

    def build_app(self) -> web.Application:
        """Return the aiohttp application with every route of the fake."""
        app = web.Application(client_max_size=_MAX_BODY)
        router = app.router
        for prefix in (self.prefix, f"{self.prefix}/images"):
            router.add_post(f"{prefix}/img2img", self._submit_route)
            router.add_post(f"{prefix}/fetch/{{request_id}}", self._fetch_route)
            router.add_post(f"{prefix}/{{admin:{_ADMIN_PATTERN}}}", self._admin_route)
        router.add_post(f"{self.prefix}/fetch", self._fetch_route)
        router.add_get("/generations/{name}.png", self._image_route)
        router.add_get("/generations/{name}.base64", self._image_route)
        add_control_routes(router, self)
        router.add_route("*", "/{tail:.*}", self._other_route)
        return app

    # Route entry points -------------------------------------------------------------------

    async def _submit_route(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "submit", self._submit)

    async def _fetch_route(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "fetch", self._fetch)

    async def _admin_route(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["admin"]
        endpoint: Endpoint = "system_details" if name == "system_details" else "admin"
        return await self._serve(request, endpoint, self._admin)

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

    def _answer(
        self,
        draft: RecordDraft,
        kind: AnswerKind | None,
        body: dict[str, Any],
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """Answer ``body``, in a shape drawn from the response variants when they are on."""
        if kind is not None and self.variants:
            chosen = self.variants.draw(kind)
            status = shape(body, status, chosen)
            draft.variants = tuple(f"{axis}={value}" for axis, value in chosen.items())
        return json_response(body, status, headers)

    def _reject(self, draft: RecordDraft, message: str) -> web.Response:
        """Answer a request the API refuses for its content (a validation message...)."""
        return self._answer(draft, "request_error", {"status": "error", "message": message})

    async def _authenticate(self, request: web.Request, draft: RecordDraft) -> _Auth | web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._reject(draft, "Invalid JSON body. Send a JSON object.")
        if self._recording:
            draft.body = safe_body(body)
        key = body.get("key")
        if key is None or key == "":
            return self._answer(
                draft, "error", {"status": "error", "message": "The key field is required."}, 401
            )
        server = self._by_key.get(key) if isinstance(key, str) else None
        if server is None:
            draft.key_fingerprint = fingerprint(str(key))
            return self._answer(
                draft, "error", {"status": "error", "message": "Invalid API key"}, 401
            )
        draft.key_fingerprint = server.key_fingerprint
        return body, key, server

    def _pick_server(self, model_id: Any) -> ServerSim | None:
        """The least loaded server that is up, preferring those that have ``model_id``."""
        now = self.clock()
        best: ServerSim | None = None
        best_rank = (True, float("inf"))
        for server in self.servers:
            if server.down:
                continue
            rank = (model_id not in server.spec.models, server.load(now))
            if rank < best_rank:
                best, best_rank = server, rank
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
        suffix = "base64" if job.base64 else "png"
        return [f"{base}{index}.{suffix}" for index in range(job.samples)]

    def _refusal(
        self, draft: RecordDraft, body: dict[str, Any], target: ServerSim
    ) -> web.Response | None:
        """The documented refusal of a valid body by this server or account, if any."""
        model_id = body["model_id"]
        if model_id not in target.spec.models:
            return self._answer(draft, "request_error", model_not_found(model_id))
        image = body["init_image"]
        if not as_flag(body.get("base64")) and not self.sources.reachable(image):
            return self._reject(draft, UNFETCHABLE_IMAGE)
        now = self.clock()
        limit = target.queue_limit
        if limit is not None and target.slot_wait(now) and target.queued(now) >= limit:
            wait = target.next_start(now) or target.slot_wait(now)
            answer, headers = rate_limited(limit, round(max(wait, 0.01), 2))
            return self._answer(draft, "error", answer, 429, headers)
        if not self.account.charge(as_integer(body.get("samples")) or 1):
            error_body = {"status": "error", "message": INSUFFICIENT_CREDITS}
            return self._answer(draft, "error", error_body, 402)
        return None

    # Handlers -----------------------------------------------------------------------------

    async def _submit(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        auth = await self._authenticate(request, draft)
        if isinstance(auth, web.Response):
            return auth
        body, key, keyed = auth
        balanced = keyed.index == 0 and as_flag(body.get("loadbalancer")) is not False
        draft.balanced = balanced
        target = self._pick_server(body.get("model_id")) if balanced else keyed
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
            return self._reject(draft, message)
        refusal = self._refusal(draft, body, target)
        if refusal is not None:
            return refusal
        now = self.clock()
        samples = as_integer(body.get("samples")) or 1
        job = self.jobs.create(
            target,
            key,
            balanced=balanced,
            now=now,
            samples=samples,
            rng=self.rng,
            base64=bool(as_flag(body.get("base64"))),
        )
        draft.request_id = str(job.id)
        if fault is not None and fault.kind == "fail":
            job.failure = fault.message
        seed = as_integer(body.get("seed"))
        if seed is None:
            seed = self.rng.randrange(2**32)
        meta = meta_for(body, seed, job.file_prefix, job.id)
        urls = self._urls(job)
        if isinstance(body.get("webhook"), str):  # also when the answer is lost below
            done = success_body(job, urls, dict(meta))
            self.webhooks.schedule(job, body["webhook"], body.get("track_id"), done)
        if fault is not None and fault.kind == "drop":
            raise _DropConnectionError
        wait = job.finish - now
        if wait > self.threshold:
            processing = processing_body(job, urls, meta, wait, self.base_url)
            return self._answer(draft, "processing", processing)
        if wait > 0:
            # The GPU keeps working if the client leaves: the job is already scheduled.
            await job.hold(wait)
        if job.failure is not None:
            return self._answer(draft, "failed", failed_body(job))
        return self._answer(draft, "success", success_body(job, urls, meta))

    async def _fetch(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        auth = await self._authenticate(request, draft)
        if isinstance(auth, web.Response):
            return auth
        body, key, keyed = auth
        request_id = request.match_info.get("request_id", body.get("request_id"))
        if request_id is None or request_id == "":
            return self._reject(draft, "The request id field is required.")
        draft.request_id = str(request_id)
        job = self.jobs.get(request_id)
        if job is not None and job.key != key:
            job = None
        target: ServerSim | None
        if job is not None:
            target, balanced = job.server, job.balanced
        else:
            balanced = keyed.index == 0 and as_flag(body.get("loadbalancer")) is not False
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
            return self._reject(draft, _NOT_FOUND)
        fetched = fetch_body(job, self._urls(job), self.clock())
        return self._answer(draft, "failed" if fetched["status"] == "failed" else "fetch", fetched)

    async def _admin(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        auth = await self._authenticate(request, draft)
        if isinstance(auth, web.Response):
            return auth
        body, _, server = auth
        draft.server = server.name
        if server.down:
            return gateway_page(502)
        fault = self._pick_fault("admin", server.name, False, draft)
        answer = await self._apply_fault(fault)
        if answer is not None:
            return answer
        name = request.match_info["admin"]
        result, kind = admin_answer(name, body, server, self.jobs, self.clock())
        return self._answer(draft, kind, result)

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
        as_text = request.path.endswith(".base64")
        if job is None or job.base64 != as_text or job.failure is not None:
            return web.Response(status=404, text="404: Not Found")
        if not job.is_done(self.clock()):
            return web.Response(status=404, text="404: Not Found")
        png = png_bytes(colour_for(job.id, index))
        if as_text:
            return web.Response(text=base64.b64encode(png).decode("ascii"))
        return web.Response(body=png, content_type="image/png")

    async def _other(self, request: web.Request, draft: RecordDraft) -> web.StreamResponse:
        fault = self._pick_fault("other", None, False, draft)
        answer = await self._apply_fault(fault)
        if answer is not None:
            return answer
        return error("Not found.", 404)
