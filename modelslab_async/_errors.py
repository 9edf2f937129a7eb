"""
Every error this library raises, under one root.

::

    ModelsLabError
    ├── InvalidRequestError (also ValueError)   bad input, found before anything was sent
    ├── TransportError                          no usable HTTP answer came back
    │   ├── ConnectError                        the request never left: always safe to retry
    │   └── ReadError                           sent, then the answer was lost or timed out:
    │                                           the job may have started on the server
    ├── ResponseFormatError                     an answer that is not the API's JSON
    ├── RedirectError                           a 3xx: never followed (the key is in the body)
    ├── APIError                                the API answered, and the answer is an error
    │   ├── AuthenticationError                 invalid or missing key (401/403)
    │   ├── RateLimitError                      throttled (429); ``retry_after`` in seconds
    │   ├── ServerBusyError                     "processing" with no id: nothing was queued
    │   └── ServerError                         5xx from the server or its gateway
    ├── JobFailedError                          the job was accepted, then ended as failed
    ├── JobTimeoutError                         the job's deadline passed; keeps ``request_id``
    └── NoServerAvailableError                  every server is cooling down or broken

Errors never carry an API key: a server is named by its name (or key fingerprint). Errors
raised for a job carry ``attempts``, the record of every try (an :class:`Attempt` each), and
the job's ``track_id``, so a failure explains itself and can be found in the server's logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from attrs import frozen

__all__ = [
    "APIError",
    "Attempt",
    "AuthenticationError",
    "ConnectError",
    "InvalidRequestError",
    "JobFailedError",
    "JobTimeoutError",
    "ModelsLabError",
    "NoServerAvailableError",
    "RateLimitError",
    "ReadError",
    "RedirectError",
    "ResponseFormatError",
    "ServerBusyError",
    "ServerError",
    "TransportError",
]


@frozen(kw_only=True)
class Attempt:
    """
    One try at one phase of a job, kept so that a failure can explain itself.

    Attributes:
        server: Name of the server (or route) tried.
        phase: ``"submit"`` or ``"fetch"``.
        error: The error's type name, or None when the attempt succeeded.
        detail: The error's message, or the status the server answered.
        waited: Seconds waited before this attempt (backoff, Retry-After, cooldown).
    """

    server: str
    phase: Literal["submit", "fetch"]
    error: str | None
    detail: str
    waited: float = 0.0


class ModelsLabError(Exception):
    """
    Root of every error raised by ``modelslab_async``.

    Attributes:
        server: Name of the server involved, if any.
        attempts: Every attempt made for the job, oldest first (empty outside a job).
        possible_duplicate: True when an earlier attempt may have started the same job.
        track_id: The job's ``track_id`` (None outside a job).
    """

    server: str | None
    attempts: tuple[Attempt, ...]
    possible_duplicate: bool
    track_id: str | None

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.server = server
        self.attempts = ()
        self.possible_duplicate = False
        self.track_id = None

    def __str__(self) -> str:
        text = self.message
        if self.server is not None:
            text = f"{text} [server {self.server}]"
        if len(self.attempts) > 1:
            text = f"{text} (after {len(self.attempts)} attempts)"
        return text

    def with_context(
        self,
        *,
        attempts: Sequence[Attempt],
        possible_duplicate: bool,
        track_id: str | None = None,
    ) -> ModelsLabError:
        """Attach the job's history and trace id; returns ``self`` for ``raise ... from``."""
        self.attempts = tuple(attempts)
        self.possible_duplicate = possible_duplicate
        self.track_id = track_id
        return self


class InvalidRequestError(ModelsLabError, ValueError):
    """
    The request is not valid; nothing was sent.

    Attributes:
        field: The offending field, by its Python name.
        allowed: What the field accepts, in words.
    """

    def __init__(self, field: str, message: str, *, allowed: str | None = None) -> None:
        text = f"{field}: {message}"
        if allowed:
            text = f"{text} (allowed: {allowed})"
        super().__init__(text)
        self.field = field
        self.allowed = allowed


class TransportError(ModelsLabError):
    """
    No usable HTTP answer came back.

    Attributes:
        sent: False when the request provably never reached the server.
    """

    sent: bool = True


class ConnectError(TransportError):
    """
    The connection could not be made; the request was never sent, so a retry is safe.

    Attributes:
        local: True when the cause is on this machine (no file descriptors left), so it says
            nothing about the server's health.
    """

    sent = False

    def __init__(self, message: str, *, server: str | None = None, local: bool = False) -> None:
        super().__init__(message, server=server)
        self.local = local


class ReadError(TransportError):
    """
    The request was sent, but its answer was lost or did not come in time.

    The server may have accepted the job: a retry may run it twice.

    Attributes:
        timed_out: True when the answer did not come within the read timeout.
    """

    def __init__(self, message: str, *, server: str | None = None, timed_out: bool = False) -> None:
        super().__init__(message, server=server)
        self.timed_out = timed_out


class ResponseFormatError(ModelsLabError):
    """
    The answer is not the API's JSON: truncated, HTML from a gateway, or of an unknown shape.

    Attributes:
        status_code: The HTTP status of the answer.
        snippet: The first characters of the body, for diagnosis.
    """

    def __init__(
        self, message: str, *, status_code: int, snippet: str = "", server: str | None = None
    ) -> None:
        super().__init__(message, server=server)
        self.status_code = status_code
        self.snippet = snippet


class RedirectError(ModelsLabError):
    """
    The API answered with a redirect. It is never followed: the key travels in the JSON body,
    and a redirect would carry it to whatever host it names. Check the base URL.

    Attributes:
        status_code: The 3xx status.
        location_host: The host the redirect pointed to, if any (never the whole URL).
    """

    def __init__(
        self, status_code: int, location_host: str | None, *, server: str | None = None
    ) -> None:
        target = f" to host {location_host!r}" if location_host else ""
        super().__init__(
            f"HTTP {status_code} redirect{target} not followed (check the base URL)",
            server=server,
        )
        self.status_code = status_code
        self.location_host = location_host


class APIError(ModelsLabError):
    """
    The API answered with an error, under HTTP 200 or an error status.

    Attributes:
        status_code: The HTTP status of the answer.
        api_message: The API's own message (``message`` or ``messege``), verbatim.
    """

    def __init__(
        self,
        api_message: str,
        *,
        status_code: int,
        server: str | None = None,
    ) -> None:
        super().__init__(f"ModelsLab API error (HTTP {status_code}): {api_message}", server=server)
        self.status_code = status_code
        self.api_message = api_message


class AuthenticationError(APIError):
    """The key was refused. Never retried on the same server."""


class RateLimitError(APIError):
    """
    The server throttled the request.

    Attributes:
        retry_after: Seconds the server asked us to wait, if it said.
    """

    def __init__(
        self,
        api_message: str,
        *,
        status_code: int = 429,
        retry_after: float | None = None,
        server: str | None = None,
    ) -> None:
        super().__init__(api_message, status_code=status_code, server=server)
        self.retry_after = retry_after


class ServerBusyError(APIError):
    """The server answered "processing" without a job id: nothing was queued, send it again."""


class ServerError(APIError):
    """A 5xx answer from the server or a gateway in front of it."""


class JobFailedError(ModelsLabError):
    """
    The job was accepted and then failed on the server.

    Attributes:
        request_id: The job's id on the server, if it had one.
        api_message: The server's message, verbatim.
    """

    def __init__(
        self, api_message: str, *, request_id: str | None = None, server: str | None = None
    ) -> None:
        where = f" (request {request_id})" if request_id else ""
        super().__init__(f"job failed{where}: {api_message}", server=server)
        self.request_id = request_id
        self.api_message = api_message


class JobTimeoutError(ModelsLabError):
    """
    The job's deadline passed before it finished.

    When ``request_id`` is set the job was accepted and may still finish: collect it later
    with ``Client.fetch(request_id, server=...)``.

    Attributes:
        request_id: The job's id on the server, if it was accepted.
        timeout: The deadline that passed, in seconds.
    """

    def __init__(
        self, timeout: float, *, request_id: str | None = None, server: str | None = None
    ) -> None:
        where = f"; request {request_id} may still finish" if request_id else ""
        super().__init__(f"job did not finish within {timeout:g}s{where}", server=server)
        self.request_id = request_id
        self.timeout = timeout


class NoServerAvailableError(ModelsLabError):
    """
    No server could take the job before its deadline: all were cooling down or broken.

    Attributes:
        waited: Seconds spent waiting for a server.
    """

    def __init__(self, message: str, *, waited: float = 0.0) -> None:
        super().__init__(message)
        self.waited = waited
