"""A faithful fake of the ModelsLab enterprise img2img API, for tests, benchmarks and demos.

`FakeModelsLab` runs a real aiohttp server on loopback with any number of simulated enterprise
servers: parallel slots and a FIFO queue per server, held requests and ``processing`` answers,
the first-key load balancer, the documented validation messages, injectable `Fault` s,
downed servers and webhook callbacks (`WebhookAttempt`). `MockTransport` answers from a
function instead, with no sockets.
Run ``python -m modelslab_async.testing serve`` for a standalone fake.
"""

from ._callbacks import WebhookAttempt
from ._fake import FakeModelsLab
from ._faults import Fault
from ._jobs import FakeServerSpec, FakeServerStats
from ._mock import MockRequest, MockTransport, json_response
from ._records import ReceivedRequest

__all__ = [
    "FakeModelsLab",
    "FakeServerSpec",
    "FakeServerStats",
    "Fault",
    "MockRequest",
    "MockTransport",
    "ReceivedRequest",
    "WebhookAttempt",
    "json_response",
]
