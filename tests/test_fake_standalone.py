"""The standalone fake produces every documented failure on demand, driven from outside.

One ``python -m modelslab_async.testing serve`` process serves the module; each test arms what
it needs through the control endpoint (``/_fake/...``) and checks the answer a client in any
language would see. One more process checks the command-line options themselves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from .contract.standalone import Standalone, standalone

KEYS = ("sk-standalone-key-1", "sk-standalone-key-2")
BODY = {"model_id": "realistic-vision-51", "prompt": "a fox", "init_image": "https://e.com/f.png"}


@pytest.fixture(scope="module")
def served() -> Iterator[Standalone]:
    """One standalone fake for the module: two servers, held answers up to 0.3 s."""
    shapes = ["--server", "server-1:2:0.05", "--server", "server-2:1:0.5"]
    with standalone(*shapes, "--processing-threshold", "0.3", keys=KEYS) as fake:
        yield fake


@pytest.fixture
def fake(served: Standalone) -> Standalone:
    """The module's fake, reset: no faults, records, balance limit, unreachable hosts or limits."""
    served.control("DELETE", "faults")
    served.control("DELETE", "records")
    served.control("DELETE", "unreachable")
    served.control("POST", "account", {"balance": None})
    for name in ("server-1", "server-2"):
        served.control("POST", f"servers/{name}", {"down": False, "queue_limit": None})
    return served


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(
    http: aiohttp.ClientSession, fake: Standalone, key: str = KEYS[1], **fields: Any
) -> tuple[int, dict[str, str], bytes]:
    """POST an img2img body to server-2's key (unless told) and return status, headers, body."""
    body = {"key": key, **BODY, **fields}
    async with http.post(f"{fake.base_url}/img2img", json=body) as answer:
        return answer.status, dict(answer.headers), await answer.read()


def arm(fake: Standalone, **fault: Any) -> None:
    """Arm one fault through the control endpoint."""
    fake.control("POST", "faults", fault)


async def test_rate_limit(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A rate_limit fault: HTTP 429, Retry-After and the documented body with retry_after."""
    arm(fake, kind="rate_limit", retry_after=2)
    status, headers, raw = await submit(http, fake)
    assert (429, "2") == (status, headers["Retry-After"])
    message = "Rate limit exceeded. Maximum 5 queued requests allowed."
    assert {"status": "error", "message": message, "retry_after": 2} == json.loads(raw)


@pytest.mark.parametrize(
    ("status", "message"),
    [(500, "Internal server error. Please try again."), (503, "Service temporarily unavailable")],
)
async def test_server_error_json(
    fake: Standalone, http: aiohttp.ClientSession, status: int, message: str
) -> None:
    """500 and 503 answer the documented JSON error."""
    arm(fake, kind="server_error", status=status)
    answer_status, _, raw = await submit(http, fake)
    assert status == answer_status
    assert json.loads(raw)["message"].startswith(message)


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_error(fake: Standalone, http: aiohttp.ClientSession, status: int) -> None:
    """502 and 504 answer a gateway's HTML page."""
    arm(fake, kind="server_error", status=status)
    answer_status, headers, raw = await submit(http, fake)
    assert (status, "text/html") == (answer_status, headers["Content-Type"].split(";")[0])
    assert b"nginx" in raw


async def test_drop(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A drop fault closes the connection without an answer."""
    arm(fake, kind="drop")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await submit(http, fake)


async def test_slow(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A slow fault delays a normal answer."""
    arm(fake, kind="slow", delay=0.3, endpoint="any")
    started = time.monotonic()
    status, _, raw = await submit(http, fake, key=KEYS[0], loadbalancer="no")
    assert (200, "success") == (status, json.loads(raw)["status"])
    assert time.monotonic() - started >= 0.3


async def test_malformed(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A malformed fault answers truncated JSON under HTTP 200."""
    arm(fake, kind="malformed")
    status, _, raw = await submit(http, fake)
    assert 200 == status
    with pytest.raises(ValueError):
        json.loads(raw)


async def test_error_under_200(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """An error_200 fault answers status error with the legacy messege key under HTTP 200."""
    arm(fake, kind="error_200", message="Server busy.")
    assert (200, {"status": "error", "messege": "Server busy."}) == _decoded(
        await submit(http, fake)
    )


async def test_busy(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A busy fault answers the documented processing form without an id; nothing is queued."""
    arm(fake, kind="busy")
    status, answer = _decoded(await submit(http, fake))
    assert (200, "processing", "") == (status, answer["status"], answer["output"])
    assert "id" not in answer
    assert 0 == fake.control("GET", "stats")[1]["accepted"]


async def test_failed_job(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A fail fault accepts the job, which ends failed with its message."""
    arm(fake, kind="fail", message="GPU fault")
    status, answer = _decoded(await submit(http, fake, key=KEYS[0], loadbalancer="no"))
    assert (200, "failed", "GPU fault") == (status, answer["status"], answer["message"])


async def test_queue_limit(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """Beyond the queue limit: the documented 429 with retry_after, until a slot frees."""
    fake.control("POST", "servers/server-2", {"queue_limit": 1})
    first = _decoded(await submit(http, fake))
    second = _decoded(await submit(http, fake))
    assert ["processing", "processing"] == [first[1]["status"], second[1]["status"]]
    status, answer = _decoded(await submit(http, fake))
    assert 429 == status
    assert "Rate limit exceeded. Maximum 1 queued requests allowed." == answer["message"]
    assert 0 < answer["retry_after"] <= 0.5
    await asyncio.sleep(answer["retry_after"] + 0.05)
    assert "processing" == _decoded(await submit(http, fake))[1]["status"]


async def test_model_not_found(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A model the server does not have: "Model not found: <id>"."""
    status, answer = _decoded(await submit(http, fake, model_id="no-such-model"))
    assert (200, "Model not found: no-such-model") == (status, answer["message"])


async def test_image_cannot_be_fetched(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """.invalid hosts and registered hosts or prefixes: "Unable to fetch image...", no download."""
    fake.control("POST", "unreachable", {"source": "private.example.com"})
    fake.control("POST", "unreachable", {"source": "https://e.com/secret/"})
    for url in (
        "https://cdn.example.invalid/a.png",
        "https://img.private.example.com/a.png",
        "https://e.com/secret/a.png",
    ):
        status, answer = _decoded(await submit(http, fake, init_image=url))
        assert (200, "Unable to fetch image from provided URL") == (status, answer["message"])


async def test_insufficient_credits(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """An exhausted balance: HTTP 402 "Insufficient credits"; each image costs one credit."""
    fake.control("POST", "account", {"balance": 2})
    status, answer = _decoded(await submit(http, fake, key=KEYS[0], samples=2, loadbalancer="no"))
    assert (200, "success") == (status, answer["status"])
    assert {"balance": 0} == fake.control("GET", "account")
    assert (402, {"status": "error", "message": "Insufficient credits"}) == _decoded(
        await submit(http, fake)
    )


async def test_server_down(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """A server taken down answers 502 from its gateway until it comes back."""
    fake.control("POST", "servers/server-2", {"down": True})
    assert 502 == (await submit(http, fake))[0]
    fake.control("POST", "servers/server-2", {"down": False})
    assert 200 == (await submit(http, fake))[0]


async def test_invalid_key_and_validation(fake: Standalone, http: aiohttp.ClientSession) -> None:
    """An unknown key is refused with 401; an invalid field with its message under 200."""
    assert (401, {"status": "error", "message": "Invalid API key"}) == _decoded(
        await submit(http, fake, key="sk-nope")
    )
    status, answer = _decoded(await submit(http, fake, num_inference_steps=30))
    assert (200, "The selected num inference steps is invalid.") == (status, answer["message"])


async def test_clear_queue_fails_the_waiting_jobs(
    fake: Standalone, http: aiohttp.ClientSession
) -> None:
    """clear_queue answers as documented and the jobs still waiting end failed."""
    while fake.control("GET", "stats")[1]["outstanding"]:  # earlier tests' jobs on server-2
        await asyncio.sleep(0.05)
    ids = [_decoded(await submit(http, fake))[1]["id"] for _ in range(3)]
    async with http.post(f"{fake.base_url}/clear_queue", json={"key": KEYS[1]}) as answer:
        assert "Queue cleared, server is restarting" == (await answer.json())["message"]
    statuses = []
    for request_id in ids:
        body = {"key": KEYS[1], "request_id": request_id}
        async with http.post(f"{fake.base_url}/fetch", json=body) as answer:
            statuses.append((await answer.json())["status"])
    assert ["processing", "failed", "failed"] == statuses


async def test_control_reads_faults_and_records(
    fake: Standalone, http: aiohttp.ClientSession
) -> None:
    """Faults armed as text or JSON are listed, fire, and show in the keyless record."""
    fake.control("POST", "faults", {"spec": "busy@server-2,count=2"})
    listed = fake.control("GET", "faults")
    assert [("busy", "server-2", 2)] == [(f["kind"], f["route"], f["remaining"]) for f in listed]
    await submit(http, fake)
    records = fake.control("GET", "records")
    assert [("submit", "busy", "server-2")] == [
        (r["endpoint"], r["fault"], r["server"]) for r in records
    ]
    assert not any(key in json.dumps(records) for key in KEYS)
    assert 1 == fake.control("GET", "faults")[0]["remaining"]
    assert [] == fake.control("DELETE", "faults")


def _decoded(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, Any]:
    return answer[0], json.loads(answer[2])


def test_serve_options() -> None:
    """--fault, --queue-limit, --balance, --unreachable, --models and --variants take effect."""
    options = [
        "--servers", "2", "--slots", "1", "--service-time", "0.5", "--processing-threshold", "0",
        "--fault", "error_200@server-2,message=Down for maintenance",
        "--fault", "server_error=1,status=503,endpoint=admin,count=1",
        "--queue-limit", "0", "--balance", "3", "--unreachable", "cdn.example.com",
        "--models", "only-model", "--variants", "4",
    ]  # fmt: skip
    with standalone(*options) as fake:
        assert "Response variants: seed 4" in fake.output
        assert "Balance: 3 images" in fake.output

        async def scenario() -> list[tuple[int, Any]]:
            async with aiohttp.ClientSession() as http:
                answers = []
                for key, fields in (
                    ("fake-key-1", {}),
                    ("fake-key-1", {"model_id": "only-model", "loadbalancer": "no"}),
                    ("fake-key-1", {"model_id": "only-model", "loadbalancer": "no"}),
                    ("fake-key-2", {"model_id": "only-model"}),
                    (
                        "fake-key-1",
                        {
                            "model_id": "only-model",
                            "init_image": "https://cdn.example.com/a.png",
                            "loadbalancer": "no",
                        },
                    ),
                ):
                    answers.append(_decoded(await submit(http, fake, key=key, **fields)))
                body = {"key": "fake-key-1"}
                async with http.post(f"{fake.base_url}/system_details", json=body) as answer:
                    answers.append((answer.status, None))
                return answers

        answers = asyncio.run(scenario())
        balance = fake.control("GET", "account")["balance"]
        records = fake.control("GET", "records")
    messages = [
        answer.get("message", answer.get("messege")) if answer else None for _, answer in answers
    ]
    assert messages[0] == "Model not found: realistic-vision-51"
    assert answers[1][1]["status"] == "processing"
    assert answers[2][0] == 429
    assert messages[3] == "Down for maintenance"
    assert messages[4] == "Unable to fetch image from provided URL"
    assert answers[5][0] == 503
    assert any(record["variants"] for record in records)
    assert 2 == balance  # the one job accepted (request 2) paid for its image
