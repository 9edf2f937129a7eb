"""Injectable failures: what the client's resilience tests drive."""

from __future__ import annotations

import random
from typing import Any, Literal, get_args

import attrs

__all__ = ["Fault", "FaultBook", "FaultEndpoint", "FaultKind"]

FaultKind = Literal[
    "rate_limit", "server_error", "drop", "slow", "malformed", "error_200", "busy", "fail"
]
FaultEndpoint = Literal["submit", "fetch", "admin", "image", "any"]

_KINDS = frozenset(get_args(FaultKind))
_ENDPOINTS = frozenset(get_args(FaultEndpoint))
_DEFAULT_ERROR_200 = "Server busy, please try again later."


def _check_count(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"Fault.{attribute.name} must be None or at least 1, got {value!r}")


def _check_probability(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Fault.{attribute.name} must be between 0 and 1, got {value!r}")


def _check_status(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 400 <= value <= 599:
        raise ValueError(f"Fault.{attribute.name} must be an HTTP error status, got {value!r}")


def _check_non_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"Fault.{attribute.name} must not be negative, got {value!r}")


@attrs.frozen
class Fault:
    """One kind of failure the fake injects into matching requests.

    Faults are checked after a request has been routed, so ``route`` can name the server chosen
    for it. The first fault that matches and has firings left wins.

    Attributes:
        kind: What goes wrong: ``rate_limit`` (HTTP 429 with ``Retry-After``), ``server_error``
            (``status``; 502/504 as a gateway HTML page), ``drop`` (the connection is closed
            without an answer), ``slow`` (``delay`` seconds, then a normal answer),
            ``malformed`` (truncated JSON), ``error_200`` (HTTP 200 with ``status: error`` and
            the legacy ``messege`` key), ``busy`` (the documented "processing" reply without
            an id; no job is created) or ``fail`` (the job is accepted, runs, and ends
            ``failed`` with ``message``, as a GPU fault or a rejected image would end it).
        route: A server name, ``"balancer"`` (requests with the first key spread by the load
            balancer), or None for any request.
        endpoint: ``"submit"``, ``"fetch"``, ``"admin"`` (``system_details``, ``clear_queue``
            and the other server endpoints), ``"image"`` (``GET /generations/...``) or ``"any"``.
        count: How many times the fault fires; None means without limit.
        probability: The chance that a matching request is hit (drawn from the fake's seeded
            random generator).
        retry_after: Seconds announced by ``rate_limit``.
        status: HTTP status of ``server_error``.
        delay: Seconds ``slow`` waits before answering.
        message: The message of ``error_200`` and ``fail``.
        after_accept: For ``drop`` on submit: False drops the connection before any job is
            created; True creates the job (it runs and can be fetched) and then loses the answer.
    """

    kind: FaultKind = attrs.field(validator=attrs.validators.in_(_KINDS))
    route: str | None = None
    endpoint: FaultEndpoint = attrs.field(
        default="submit", validator=attrs.validators.in_(_ENDPOINTS)
    )
    count: int | None = attrs.field(default=1, validator=_check_count)
    probability: float = attrs.field(default=1.0, validator=_check_probability)
    retry_after: float = attrs.field(default=1.0, validator=_check_non_negative)
    status: int = attrs.field(default=500, validator=_check_status)
    delay: float = attrs.field(default=0.5, validator=_check_non_negative)
    message: str = _DEFAULT_ERROR_200
    after_accept: bool = False

    @classmethod
    def rate_limit(
        cls,
        retry_after: float = 1.0,
        *,
        route: str | None = None,
        endpoint: FaultEndpoint = "submit",
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Answer HTTP 429 with ``Retry-After`` and the documented queue-limit message.

        Args:
            retry_after: Seconds announced in the header and in the body's ``retry_after``.
            route: See `Fault.route`.
            endpoint: See `Fault.endpoint`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls(
            "rate_limit",
            route=route,
            endpoint=endpoint,
            count=count,
            probability=probability,
            retry_after=retry_after,
        )

    @classmethod
    def server_error(
        cls,
        status: int = 500,
        *,
        route: str | None = None,
        endpoint: FaultEndpoint = "submit",
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Answer an HTTP error: JSON for 500/503 (and others), a gateway HTML page for 502/504.

        Args:
            status: The HTTP status.
            route: See `Fault.route`.
            endpoint: See `Fault.endpoint`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls(
            "server_error",
            route=route,
            endpoint=endpoint,
            count=count,
            probability=probability,
            status=status,
        )

    @classmethod
    def drop(
        cls,
        after_accept: bool = False,
        *,
        route: str | None = None,
        endpoint: FaultEndpoint = "submit",
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Close the connection without an answer; the client sees a server disconnect.

        Args:
            after_accept: For submits, create the job first (it still runs) and lose the answer.
            route: See `Fault.route`.
            endpoint: See `Fault.endpoint`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls(
            "drop",
            route=route,
            endpoint=endpoint,
            count=count,
            probability=probability,
            after_accept=after_accept,
        )

    @classmethod
    def slow(
        cls,
        delay: float = 0.5,
        *,
        route: str | None = None,
        endpoint: FaultEndpoint = "submit",
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Wait ``delay`` seconds before handling the request normally.

        Args:
            delay: Seconds to wait.
            route: See `Fault.route`.
            endpoint: See `Fault.endpoint`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls(
            "slow",
            route=route,
            endpoint=endpoint,
            count=count,
            probability=probability,
            delay=delay,
        )

    @classmethod
    def malformed(
        cls,
        *,
        route: str | None = None,
        endpoint: FaultEndpoint = "submit",
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Answer HTTP 200 ``application/json`` with a truncated JSON body.

        Args:
            route: See `Fault.route`.
            endpoint: See `Fault.endpoint`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls(
            "malformed", route=route, endpoint=endpoint, count=count, probability=probability
        )

    @classmethod
    def error_200(
        cls,
        message: str = _DEFAULT_ERROR_200,
        *,
        route: str | None = None,
        endpoint: FaultEndpoint = "submit",
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Answer HTTP 200 with ``{"status": "error", "messege": message}`` (legacy key).

        Args:
            message: The error text.
            route: See `Fault.route`.
            endpoint: See `Fault.endpoint`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls(
            "error_200",
            route=route,
            endpoint=endpoint,
            count=count,
            probability=probability,
            message=message,
        )

    @classmethod
    def busy(
        cls,
        *,
        route: str | None = None,
        endpoint: FaultEndpoint = "submit",
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Answer the documented "busy" form: ``processing`` with no id; no job is created.

        Args:
            route: See `Fault.route`.
            endpoint: See `Fault.endpoint`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls("busy", route=route, endpoint=endpoint, count=count, probability=probability)

    @classmethod
    def fail(
        cls,
        message: str = "Job failed on the GPU server.",
        *,
        route: str | None = None,
        count: int | None = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Accept the job, run it, and end it ``failed`` with ``message``.

        A job held open is answered ``{"status": "failed", "id", "message"}``; a queued one is
        fetched as ``processing`` until its finish time, then as ``failed``.

        Args:
            message: The failure message.
            route: See `Fault.route`.
            count: See `Fault.count`.
            probability: See `Fault.probability`.

        Returns:
            The fault.
        """
        return cls("fail", route=route, count=count, probability=probability, message=message)


@attrs.define(slots=True)
class _Armed:
    fault: Fault
    remaining: int | None


class FaultBook:
    """The faults armed on a fake, with their remaining firings."""

    __slots__ = ("_armed",)

    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def __bool__(self) -> bool:
        return bool(self._armed)

    def add(self, fault: Fault) -> None:
        """Arm ``fault`` after those already armed."""
        self._armed.append(_Armed(fault, fault.count))

    def clear(self) -> None:
        """Disarm every fault."""
        self._armed.clear()

    def pending(self) -> list[tuple[Fault, int | None]]:
        """Return the faults still armed with their remaining firings (None = unlimited)."""
        return [(armed.fault, armed.remaining) for armed in self._armed]

    def pick(
        self, endpoint: str, server: str | None, balanced: bool, rng: random.Random
    ) -> Fault | None:
        """Return the fault that fires for a request, using up one of its firings.

        Args:
            endpoint: The request's endpoint ("submit", "fetch", "image", ...).
            server: The name of the server the request was routed to, if any.
            balanced: Whether the load balancer routed the request.
            rng: The fake's random generator, for ``probability``.

        Returns:
            The fault that fires, or None.
        """
        for armed in self._armed:
            fault = armed.fault
            if fault.endpoint not in ("any", endpoint):
                continue
            route = fault.route
            if route is not None and route != server and not (route == "balancer" and balanced):
                continue
            if fault.probability < 1.0 and rng.random() >= fault.probability:
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._armed.remove(armed)
            return fault
        return None
