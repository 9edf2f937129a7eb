"""
modelslab-async: an asyncio client for the ModelsLab enterprise img2img API, with a
load-balancing pool of enterprise servers, retries, polling and streaming batches.
"""

from __future__ import annotations

import importlib.metadata as _metadata

from ._backend import CoordinationBackend, Grant, MemoryBackend, SharedState, SlotSpec
from ._client import Client
from ._config import DEFAULT, DEFAULT_BASE_URL, Default, Endpoints, PollPolicy, Timeouts
from ._converter import request_from_wire, request_to_wire
from ._dispatch import BatchProgress, Dispatcher, Job, JobClient, JobOutcome
from ._errors import (
    APIError,
    Attempt,
    AuthenticationError,
    ConnectError,
    InvalidRequestError,
    JobFailedError,
    JobTimeoutError,
    ModelsLabError,
    NoServerAvailableError,
    RateLimitError,
    ReadError,
    RedirectError,
    ResponseFormatError,
    ServerBusyError,
    ServerError,
    TransportError,
)
from ._events import EventKind, JobEvent, JobEventHandler
from ._health import HealthPolicy
from ._models import (
    ImageResult,
    Img2ImgRequest,
    JobStatus,
    SafetyCheckerType,
    Scheduler,
    SystemDetails,
)
from ._pool import Routing, ServerPool
from ._retry import RetryPolicy
from ._secrets import Secret, fingerprint
from ._server import Server, ServerSnapshot
from ._transport import AiohttpTransport, RawResponse, Transport
from ._webhooks import WebhookReceiver

__all__ = [
    "AiohttpTransport",
    "APIError",
    "Attempt",
    "AuthenticationError",
    "BatchProgress",
    "Client",
    "ConnectError",
    "CoordinationBackend",
    "DEFAULT",
    "Default",
    "DEFAULT_BASE_URL",
    "Dispatcher",
    "Endpoints",
    "EventKind",
    "fingerprint",
    "Grant",
    "HealthPolicy",
    "ImageResult",
    "Img2ImgRequest",
    "InvalidRequestError",
    "Job",
    "JobClient",
    "JobEvent",
    "JobEventHandler",
    "JobFailedError",
    "JobOutcome",
    "JobStatus",
    "JobTimeoutError",
    "MemoryBackend",
    "ModelsLabError",
    "NoServerAvailableError",
    "PollPolicy",
    "RateLimitError",
    "RawResponse",
    "ReadError",
    "RedirectError",
    "request_from_wire",
    "request_to_wire",
    "ResponseFormatError",
    "RetryPolicy",
    "Routing",
    "SafetyCheckerType",
    "Scheduler",
    "Secret",
    "Server",
    "ServerBusyError",
    "ServerError",
    "ServerPool",
    "ServerSnapshot",
    "SharedState",
    "SlotSpec",
    "SystemDetails",
    "Timeouts",
    "Transport",
    "TransportError",
    "WebhookReceiver",
]


try:
    __version__ = _metadata.version("modelslab-async")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
