"""
Receiving ModelsLab's webhook callbacks: unsigned, best effort, possibly twice.

ModelsLab POSTs a job's final answer (plus its ``track_id``) to the job's ``webhook`` URL, with no
signature and no retry. So the URL itself is the credential: ``public_url/<token>`` where the token
is HMAC-SHA256(secret, track_id). A callback is trusted only when the token recomputed from the
payload's own ``track_id`` equals the path token (constant-time) *and* that job was registered
with `WebhookReceiver.expect`; its ``id`` must match the job's known request id. Everything else
is refused or ignored without touching any job. Polling stays the fallback: a callback only ever
settles a job sooner.

Status codes of `WebhookReceiver.handle` (and of both web adapters):

=====  ===============================================================================
200    accepted (resolved the job), or ignored: a duplicate, a late callback (the job was
       forgotten less than ``late_after`` seconds ago) or a non-final payload (``processing``)
400    the body is not a JSON object with a ``status``
404    forged (no ``track_id``, or the token does not match it) or unknown (not registered)
409    the payload's ``id`` is not the job's request id: ignored, logged at warning
413    the body is larger than ``max_body_bytes``
=====  ===============================================================================
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final, Protocol, final
from urllib.parse import urlsplit

from aiohttp import web

from ._converter import ApiResponse, parse_response
from ._errors import InvalidRequestError, ResponseFormatError
from ._webhook_apps import ASGIApp, aiohttp_app, asgi_app

__all__ = ["CallbackBook", "WebhookReceiver", "WebhookRelay", "callbacks_of"]

logger = logging.getLogger("modelslab_async.webhooks")

_MIN_SECRET_BYTES: Final = 16
_SHOWN: Final = 40  # characters of a track_id or an id shown in a log line
_MAX_LATE: Final = 100_000  # forgotten track_ids remembered, at most
_FINAL: Final = frozenset({"success", "failed", "error"})
_RELAY: Final = 202  # a good callback for a job another process awaits

_STATS: Final = (
    "received",
    "accepted",
    "duplicates",
    "late",
    "forged",
    "unknown",
    "mismatched",
    "ignored",
    "invalid",
    "oversize",
    "relayed",
)


def _short(value: str) -> str:
    return value if len(value) <= _SHOWN else f"{value[:_SHOWN]}..."


def is_loopback_host(host: str) -> bool:
    """Whether a host name is 127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_public_url(public_url: object) -> str:
    bad = InvalidRequestError(
        "public_url", f"must be an absolute URL without query or fragment, got {public_url!r}"
    )
    if not isinstance(public_url, str):
        raise bad
    try:
        parts = urlsplit(public_url)
    except ValueError:
        raise bad from None
    if not parts.hostname or parts.query or parts.fragment:
        raise bad
    if parts.scheme != "https" and not (
        parts.scheme == "http" and is_loopback_host(parts.hostname)
    ):
        raise InvalidRequestError(
            "public_url",
            f"must be https, got {public_url!r}",
            allowed="https URLs; http only for 127.0.0.0/8, ::1 and localhost",
        )
    return public_url.rstrip("/")


def _answer(status: int, result: str) -> tuple[int, bytes]:
    return status, json.dumps(
        {"status": "ok" if status == 200 else "error", "result": result}
    ).encode()


class _Expected:
    """A job whose callback is awaited."""

    __slots__ = ("future", "request_id")

    def __init__(self, future: asyncio.Future[ApiResponse], request_id: str | None) -> None:
        self.future = future
        self.request_id = request_id


class WebhookRelay(Protocol):
    """
    Carries a callback from the process that received it to the one that awaits it (several
    worker processes behind one public URL). ``modelslab_async.redis.RedisWebhookRelay`` is one.
    """

    async def publish(self, track_id: str, body: bytes) -> None:
        """Hand a verified callback for ``track_id`` to every process of the app."""
        ...

    def attach(self, receiver: WebhookReceiver) -> None:
        """Deliver the callbacks other processes relay to ``receiver`` (``deliver``)."""
        ...


class CallbackBook:
    """
    The jobs a receiver awaits callbacks for. Internal: the client registers its jobs here
    (through :func:`callbacks_of`); users only mount the receiver.
    """

    __slots__ = ("expected", "late", "late_after")

    def __init__(self, late_after: float) -> None:
        self.late_after = late_after
        self.expected: dict[str, _Expected] = {}
        self.late: OrderedDict[str, float] = OrderedDict()  # track_id -> when forgotten

    def expect(
        self, track_id: str, *, request_id: str | None = None
    ) -> asyncio.Future[ApiResponse]:
        """
        Register that a callback for this job is awaited; return the future it resolves.

        The future gets the job's final answer (``success``, ``failed`` or ``error``) from the
        first trusted callback, and never an exception. Calling this again for the same
        ``track_id`` returns the same future. Call it inside the event loop that serves the
        receiver.

        Raises:
            InvalidRequestError: ``track_id`` is not a non-empty string.
        """
        _check_track_id(track_id)
        entry = self.expected.get(track_id)
        if entry is None:
            self.late.pop(track_id, None)
            future: asyncio.Future[ApiResponse] = asyncio.get_running_loop().create_future()
            entry = self.expected[track_id] = _Expected(future, request_id)
        elif request_id is not None:
            entry.request_id = request_id
        return entry.future

    def set_request_id(self, track_id: str, request_id: str) -> None:
        """Record the id the submit answered for this job; unknown jobs are skipped."""
        entry = self.expected.get(track_id)
        if entry is not None:
            entry.request_id = request_id

    def forget(self, track_id: str) -> None:
        """
        Stop awaiting this job's callback (it ended, by polling or by its callback).

        Its later callbacks are answered 200 and ignored for ``late_after`` seconds. The
        future is left as it is (never cancelled).
        """
        if self.expected.pop(track_id, None) is None:
            return
        self.purge_late()
        self.late[track_id] = time.monotonic()
        self.late.move_to_end(track_id)
        if len(self.late) > _MAX_LATE:
            self.late.popitem(last=False)

    def purge_late(self) -> None:
        horizon = time.monotonic() - self.late_after
        late = self.late
        while late and next(iter(late.values())) < horizon:
            late.popitem(last=False)


def callbacks_of(receiver: WebhookReceiver) -> CallbackBook:
    """The receiver's book of awaited jobs (for the client, not part of the public API)."""
    return receiver._book


@final
class WebhookReceiver:
    """
    Receive ModelsLab webhook callbacks and resolve the jobs that await them.

    Give each job ``webhook=receiver.url_for(track_id)``, register it with `expect`, and
    mount the receiver: ``app.add_subapp("/hooks", receiver.aiohttp_app())`` (aiohttp) or
    ``app.mount("/hooks", receiver.asgi_app())`` (Starlette, FastAPI, Litestar). Callbacks
    are best effort: keep polling, and `forget` the job once it has ended either way.

    Args:
        public_url: Where ModelsLab reaches the mounted receiver, e.g.
            ``https://api.example.com/hooks``. https, except on loopback hosts.
        secret: The HMAC key of the URL tokens. Give every process of one web app the same
            secret (16 bytes or more) so that any of them can check a callback; None draws a
            random one for this process.
        max_body_bytes: Larger callbacks are refused with 413, after reading no more than
            this many bytes plus one.
        late_after: How long, in seconds, a forgotten job's callbacks are still answered 200
            and ignored ("late") rather than 404.
        relay: With several worker processes behind one public URL (and one ``secret``): a
            callback with a good token for a job this process does not await is handed to
            the relay (answered 202), which brings it to the process that awaits it
            (``modelslab_async.redis.RedisWebhookRelay``).

    Raises:
        InvalidRequestError: ``public_url`` is not https (nor a loopback URL), or the secret
            or the limits are unusable.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        public_url: str,
        *,
        secret: bytes | str | None = None,
        max_body_bytes: int = 1_048_576,
        late_after: float = 3600.0,
        relay: WebhookRelay | None = None,
    ) -> None:
        self._public_url = _check_public_url(public_url)
        self.relay = relay
        if relay is not None:
            relay.attach(self)
        if secret is None:
            secret = secrets.token_bytes(32)
        elif isinstance(secret, str):
            secret = secret.encode("utf-8")
        if len(secret) < _MIN_SECRET_BYTES:
            raise InvalidRequestError("secret", f"must be at least {_MIN_SECRET_BYTES} bytes")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise InvalidRequestError("max_body_bytes", "must be an integer")
        if max_body_bytes < 1:
            raise InvalidRequestError("max_body_bytes", f"must be positive, got {max_body_bytes}")
        if not (late_after >= 0 and math.isfinite(late_after)):
            raise InvalidRequestError("late_after", f"must be >= 0 seconds, got {late_after!r}")
        self._secret = secret
        self.max_body_bytes = max_body_bytes
        self.late_after = float(late_after)
        self._book = CallbackBook(self.late_after)
        self._stats = dict.fromkeys(_STATS, 0)

    def __repr__(self) -> str:
        return (
            f"<WebhookReceiver {self._public_url} expected={len(self._book.expected)} "
            f"late={len(self._book.late)}>"
        )

    @property
    def public_url(self) -> str:
        """The URL the receiver is reached at, without a trailing slash."""
        return self._public_url

    @property
    def stats(self) -> dict[str, int]:
        """
        A copy of the counters: ``received`` (every callback), ``accepted`` (resolved a
        job), ``duplicates``, ``late``, ``forged`` (no track_id or a wrong token),
        ``unknown`` (a good token, no such job), ``mismatched`` (wrong ``id``),
        ``ignored`` (not final), ``invalid`` (not a JSON object) and ``oversize``.
        """
        return dict(self._stats)

    # Registration ------------------------------------------------------------------------

    def _token(self, track_id: str) -> str:
        digest = hmac.new(self._secret, track_id.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def url_for(self, track_id: str) -> str:
        """
        Return the ``webhook`` URL of the job with this ``track_id``.

        Raises:
            InvalidRequestError: ``track_id`` is not a non-empty string.
        """
        _check_track_id(track_id)
        return f"{self._public_url}/{self._token(track_id)}"

    # The handler -------------------------------------------------------------------------

    def handle(self, token: str, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        """
        Answer one callback: ``POST <public_url>/<token>`` with ``body``.

        Framework-agnostic: the adapters call it; so can any other web framework, after
        reading at most ``max_body_bytes + 1`` bytes of the body.

        Returns:
            The HTTP status (see the module's table) and a small JSON body to answer.
        """
        stats = self._stats
        stats["received"] += 1
        if len(body) > self.max_body_bytes or _declared_length(headers) > self.max_body_bytes:
            stats["oversize"] += 1
            return _answer(413, "too large")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            stats["invalid"] += 1
            return _answer(400, "not a JSON object")
        track_id = payload.get("track_id")
        if isinstance(track_id, int) and not isinstance(track_id, bool):
            track_id = str(track_id)
        if not isinstance(track_id, str) or not track_id:
            stats["forged"] += 1
            return _answer(404, "not found")
        expected_token = self._token(track_id).encode("ascii")
        if not hmac.compare_digest(expected_token, token.encode("utf-8", "replace")):
            stats["forged"] += 1
            logger.info("webhook refused: wrong token for track_id %r", _short(track_id))
            return _answer(404, "not found")
        return self._settle(track_id, payload, relayable=self.relay is not None)

    async def dispatch(
        self, token: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        """
        :meth:`handle`, then hand a good callback for another process's job to the relay
        (the web adapters call this).
        """
        status, answer = self.handle(token, headers, body)
        relay = self.relay
        if status == _RELAY and relay is not None:
            payload = json.loads(body)
            await relay.publish(str(payload["track_id"]), body)
        return status, answer

    def deliver(self, track_id: str, body: bytes) -> None:
        """
        A callback another process received and relayed: settle the job if this process
        awaits it (the sender checked the token); otherwise nothing.
        """
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(payload, dict) and track_id in self._book.expected:
            self._settle(track_id, payload, relayable=False)

    def _settle(
        self, track_id: str, payload: dict[str, Any], *, relayable: bool
    ) -> tuple[int, bytes]:
        """A callback whose token matches its ``track_id``: match it with the job."""
        stats = self._stats
        entry = self._book.expected.get(track_id)
        if entry is None or entry.future.cancelled():
            self._book.purge_late()
            if entry is None and track_id not in self._book.late:
                if relayable:
                    stats["relayed"] += 1
                    return _answer(_RELAY, "relayed")
                stats["unknown"] += 1
                return _answer(404, "not found")
            stats["late"] += 1
            return _answer(200, "late")
        if entry.future.done():
            stats["duplicates"] += 1
            return _answer(200, "duplicate")
        try:
            response = parse_response(payload)
        except ResponseFormatError:
            stats["invalid"] += 1
            return _answer(400, "no status")
        if entry.request_id is not None and response.id not in (None, entry.request_id):
            stats["mismatched"] += 1
            logger.warning(
                "webhook ignored: track_id %r came with id %r, the job's id is %r",
                _short(track_id),
                _short(response.id or ""),
                _short(entry.request_id),
            )
            return _answer(409, "id mismatch")
        if response.status not in _FINAL or (response.status == "success" and not response.output):
            stats["ignored"] += 1
            return _answer(200, "ignored")
        stats["accepted"] += 1
        entry.future.set_result(response)
        return _answer(200, "accepted")

    # Web adapters ------------------------------------------------------------------------

    def aiohttp_app(self) -> web.Application:
        """
        Return an aiohttp application with one route, ``POST /{token}``.

        Mount it with ``app.add_subapp("/hooks", receiver.aiohttp_app())``.
        """
        return aiohttp_app(self)

    def asgi_app(self) -> ASGIApp:
        """
        Return a plain ASGI 3 application answering ``POST /{token}`` under its mount point.

        It reads the body in chunks, no more than ``max_body_bytes + 1`` bytes, and answers
        JSON; ``lifespan`` events are acknowledged.
        """
        return asgi_app(self)


def _check_track_id(track_id: object) -> None:
    if not isinstance(track_id, str) or not track_id:
        raise InvalidRequestError("track_id", f"must be a non-empty string, got {track_id!r}")


def _declared_length(headers: Mapping[str, str]) -> int:
    for name, value in headers.items():
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
