"""
One API call: the key put into the body, the POST sent, the answer classified. Internal.

This is the only place that puts a key into a request; every other layer refers to a server
by its route's name.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Mapping
from typing import Any, Literal

from attrs import frozen

from ._config import Endpoints, Timeouts
from ._converter import ApiResponse
from ._responses import classify
from ._secrets import Scrubber, loggable_body
from ._server import Route
from ._transport import RawResponse, Transport

__all__ = ["Phase", "Wire"]

logger = logging.getLogger("modelslab_async")

Phase = Literal["submit", "fetch", "other"]


@frozen
class Wire:
    """How to reach the API: transport, base URL, paths, timeouts."""

    transport: Transport
    base_url: str
    endpoints: Endpoints
    timeouts: Timeouts
    scrub: Scrubber  # removes the pool's keys from whatever text a server sends back

    async def call(
        self,
        route: Route,
        path: str,
        fields: Mapping[str, Any],
        *,
        read_timeout: float,
        phase: Phase,
        defaults: Mapping[str, Any] | None = None,
    ) -> ApiResponse:
        """
        POST ``fields`` plus the route's key to ``path``; return the classified answer.

        ``defaults`` go in first, so a field of the caller's wins over them.
        """
        route.in_flight += 1
        try:
            raw = await self.send(route, path, fields, read_timeout=read_timeout, defaults=defaults)
        finally:
            route.in_flight -= 1
        return self.classify(raw, route, phase)

    def send(
        self,
        route: Route,
        path: str,
        fields: Mapping[str, Any],
        *,
        read_timeout: float,
        defaults: Mapping[str, Any] | None = None,
    ) -> Coroutine[Any, Any, RawResponse]:
        """
        The POST of :meth:`call`, not yet awaited (the submit path awaits it itself: one
        coroutine layer less on every resumption of the HTTP exchange).
        """
        body = (
            {**defaults, **fields, "key": route.key} if defaults else {**fields, "key": route.key}
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("POST %s to %s: %s", path, route.name, loggable_body(body))
        return self.transport.post_json(
            f"{self.base_url}/{path}", body, timeout=read_timeout, server=route.name
        )

    def classify(self, raw: RawResponse, route: Route, phase: Phase) -> ApiResponse:
        """The answer parsed, or its typed error (server text scrubbed of keys)."""
        return classify(raw, server=route.name, phase=phase, scrub=self.scrub)
