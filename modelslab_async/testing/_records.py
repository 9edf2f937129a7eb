"""What the fake received: one record per request, in arrival order, without keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from modelslab_async._secrets import redact_body

__all__ = ["Endpoint", "ReceivedRequest", "RecordDraft", "Recorder", "safe_body"]

Endpoint = Literal["submit", "fetch", "system_details", "admin", "image", "other"]

# Long strings that are not URLs (base64 images) are cut to this many characters.
_KEPT_CHARS = 64
_LONG_STRING = 1024


@attrs.frozen
class ReceivedRequest:
    """One request as the fake received and answered it.

    Attributes:
        at: Loop time of arrival.
        method: HTTP method.
        path: URL path.
        endpoint: ``"submit"``, ``"fetch"``, ``"system_details"``, ``"admin"`` (the other server
            endpoints: ``clear_queue``, ``schedulers_list``...), ``"image"`` or ``"other"``.
        key_fingerprint: Fingerprint of the key in the body, if there was one.
        server: Name of the server the request was routed to, if any.
        balanced: Whether it arrived with the first key and the load balancer spread it.
        body: The JSON body without the key; long base64 images are cut to 64 characters.
        status: HTTP status answered; 0 when the connection was dropped.
        fault: The kind of the fault applied, if any.
        request_id: The id of the job created or fetched, if any.
        variants: The response variants drawn for the answer (``"id_type=str"``...), when
            the fake runs with ``variants``.
    """

    at: float
    method: str
    path: str
    endpoint: Endpoint
    key_fingerprint: str | None
    server: str | None
    balanced: bool
    body: dict[str, Any]
    status: int
    fault: str | None
    request_id: str | None
    variants: tuple[str, ...] = ()


@attrs.define(slots=True)
class RecordDraft:
    """The mutable record of a request while it is being handled."""

    at: float
    method: str
    path: str
    endpoint: Endpoint
    key_fingerprint: str | None = None
    server: str | None = None
    balanced: bool = False
    body: dict[str, Any] = attrs.field(factory=dict)
    status: int = 0
    fault: str | None = None
    request_id: str | None = None
    variants: tuple[str, ...] = ()

    def freeze(self) -> ReceivedRequest:
        """Return the finished, immutable record."""
        return ReceivedRequest(
            at=self.at,
            method=self.method,
            path=self.path,
            endpoint=self.endpoint,
            key_fingerprint=self.key_fingerprint,
            server=self.server,
            balanced=self.balanced,
            body=self.body,
            status=self.status,
            fault=self.fault,
            request_id=self.request_id,
            variants=self.variants,
        )


def _shorten(name: str, value: Any) -> Any:
    if not isinstance(value, str) or len(value) <= _KEPT_CHARS:
        return value
    is_image = name.endswith("image") and not value.startswith(("http://", "https://"))
    return value[:_KEPT_CHARS] if is_image or len(value) > _LONG_STRING else value


def safe_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return a request body fit to record: no key, other secrets redacted, base64 cut short."""
    return {
        name: _shorten(name, value) for name, value in redact_body(body).items() if name != "key"
    }


class Recorder:
    """Keeps the most recent ``max_records`` records in arrival order."""

    __slots__ = ("_items", "_max", "_seq")

    def __init__(self, max_records: int | None) -> None:
        if max_records is not None and max_records < 0:
            raise ValueError(f"max_records must be None or >= 0, got {max_records!r}")
        self._max = max_records
        self._items: dict[int, ReceivedRequest | None] = {}
        self._seq = 0

    def open(self) -> int | None:
        """Reserve the arrival position of a request; None when nothing is recorded."""
        if self._max == 0:
            return None
        self._seq += 1
        items = self._items
        items[self._seq] = None
        if self._max is not None and len(items) > self._max:
            del items[next(iter(items))]
        return self._seq

    def close(self, seq: int | None, draft: RecordDraft) -> None:
        """Store the finished record of a request at its arrival position."""
        if seq is not None and seq in self._items:
            self._items[seq] = draft.freeze()

    def records(self) -> list[ReceivedRequest]:
        """Return the answered requests in arrival order."""
        return [record for record in self._items.values() if record is not None]

    def clear(self) -> None:
        """Forget every record."""
        self._items.clear()
