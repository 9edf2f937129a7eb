"""The fake's documented server endpoints, refusals, base64 answers and control, in process."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from modelslab_async import APIError, Client, RateLimitError, RetryPolicy, ServerPool
from modelslab_async.testing import FakeModelsLab, FakeServerSpec
from modelslab_async.testing._admin import ADMIN_ENDPOINTS
from modelslab_async.testing._faultspec import fault_from_json, fault_from_text

from ._helpers import FAST_HEALTH, make_request

KEYS = ("sk-endpoints-key-1", "sk-endpoints-key-2")
BODY = {"model_id": "realistic-vision-51", "prompt": "a fox", "init_image": "https://e.com/f.png"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


def specs(**options: Any) -> list[FakeServerSpec]:
    """Two one-slot servers; the second has only the model ``hf-model``."""
    return [
        FakeServerSpec("gpu-a", KEYS[0], slots=1, service_time=0.05, **options),
        FakeServerSpec(
            "gpu-b", KEYS[1], slots=1, service_time=0.05, models=("hf-model",), **options
        ),
    ]


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST JSON, return the status and the decoded answer."""
    async with http.post(url, json=body) as answer:
        return answer.status, await answer.json(content_type=None)


@pytest.mark.parametrize("prefix", ["", "images/"])
async def test_every_server_endpoint_on_both_paths(
    http: aiohttp.ClientSession, prefix: str
) -> None:
    """Each documented server endpoint answers on the documented and on the SDK path."""
    async with FakeModelsLab(specs()) as fake:
        for name in ADMIN_ENDPOINTS:
            body = {"key": KEYS[1], "model_id": "hf-model"}
            status, answer = await post(http, f"{fake.base_url}/{prefix}{name}", body)
            assert 200 == status, name
            assert answer.get("status") in (None, "ok", "success"), (name, answer)
        _, models = await post(http, f"{fake.base_url}/get_all_models", {"key": KEYS[1]})
        _, details = await post(http, f"{fake.base_url}/system_details", {"key": KEYS[0]})
    assert ["hf-model"] == [model["model_id"] for model in models["models"]]
    assert 3 == details["model_count"]
    assert {"system_details", "admin"} == {record.endpoint for record in fake.received}


async def test_verify_model(http: aiohttp.ClientSession) -> None:
    """verify_model: exists, not found, or the field is missing."""
    async with FakeModelsLab(specs()) as fake:
        url = f"{fake.base_url}/verify_model"
        answers = [
            (await post(http, url, {"key": KEYS[1], **fields}))[1]["message"]
            for fields in ({"model_id": "hf-model"}, {"model_id": "other"}, {})
        ]
    assert [
        "Model exists on server",
        "Model not found: other",
        "The model id field is required.",
    ] == answers


async def test_balancer_prefers_servers_with_the_model(http: aiohttp.ClientSession) -> None:
    """First-key jobs for a model only one server has go to that server, even when busier."""
    async with FakeModelsLab(specs(), processing_threshold=0) as fake:
        for _ in range(3):
            status, answer = await post(
                http, f"{fake.base_url}/img2img", {"key": KEYS[0], **BODY, "model_id": "hf-model"}
            )
            assert (200, "processing") == (status, answer["status"])
    assert {"gpu-b"} == {record.server for record in fake.received}


async def test_base64_answers(http: aiohttp.ClientSession) -> None:
    """With base64 "yes" the outputs are links to the image as base64 text."""
    image = base64.b64encode(b"\x89PNG fake").decode()
    async with FakeModelsLab(specs()) as fake:
        body = {
            "key": KEYS[1],
            **BODY,
            "model_id": "hf-model",
            "init_image": image,
            "base64": "YES",
        }
        _, answer = await post(http, f"{fake.base_url}/img2img", body)
        (url,) = answer["output"]
        assert url.endswith(".base64")
        assert "yes" == answer["meta"]["base64"].lower()
        async with http.get(url) as got:
            assert base64.b64decode(await got.text()).startswith(PNG_SIGNATURE)
        async with http.get(url.replace(".base64", ".png")) as got:
            assert 404 == got.status


async def test_clear_queue_ends_a_held_submit_at_once(http: aiohttp.ClientSession) -> None:
    """A submit held for a waiting job is answered failed as soon as the queue is cleared."""
    slow = [FakeServerSpec("gpu-a", KEYS[0], slots=1, service_time=0.4)]
    async with FakeModelsLab(slow, processing_threshold=5) as fake:
        url = f"{fake.base_url}/img2img"
        first = asyncio.create_task(post(http, url, {"key": KEYS[0], **BODY}))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(post(http, url, {"key": KEYS[0], **BODY}))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await post(http, f"{fake.base_url}/clear_queue", {"key": KEYS[0]})
        _, cut = await second
        assert time.monotonic() - started < 0.2
        _, finished = await first
        stats = fake.stats()[0]
    assert ("failed", "success") == (cut["status"], finished["status"])
    assert (2, 1, 1) == (stats.accepted, stats.completed, stats.cleared)


async def test_queue_limit_reaches_the_client_as_rate_limit() -> None:
    """FakeModelsLab(queue_limit=...) refuses with 429; the client raises RateLimitError."""
    one = [FakeServerSpec("gpu-a", KEYS[0], slots=1, service_time=0.3)]
    async with FakeModelsLab(one, processing_threshold=0, queue_limit=0) as fake:
        pool = ServerPool([KEYS[0]], health=FAST_HEALTH)
        retry = RetryPolicy.no_wait(attempts=1)
        async with Client(pool, base_url=fake.base_url, retry=retry) as client:
            first = asyncio.create_task(client.img2img(make_request()))
            await asyncio.sleep(0.05)
            with pytest.raises(RateLimitError) as caught:
                await client.img2img(make_request())
            await first
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 0.3
    assert "Maximum 0 queued requests" in str(caught.value)


async def test_balance_and_unreachable_in_process() -> None:
    """The balance and unreachable sources are settable; refusals reach the client as APIError."""
    async with FakeModelsLab(specs(), balance=1, unreachable=["blocked.example.com"]) as fake:
        pool = ServerPool([KEYS[0]], health=FAST_HEALTH, loadbalancer_flag=False)
        retry = RetryPolicy.no_wait(attempts=1)
        async with Client(pool, base_url=fake.base_url, retry=retry) as client:
            with pytest.raises(APIError, match="Unable to fetch image"):
                await client.img2img(make_request(init_image="https://blocked.example.com/a.png"))
            await client.img2img(make_request())
            assert 0 == fake.balance
            with pytest.raises(APIError, match="Insufficient credits") as caught:
                await client.img2img(make_request())
            assert 402 == caught.value.status_code
            fake.balance = None
            fake.clear_unreachable()
            await client.img2img(make_request(init_image="https://blocked.example.com/a.png"))
            fake.add_unreachable("https://e.com/private/")
            with pytest.raises(APIError, match="Unable to fetch image"):
                await client.img2img(make_request(init_image="https://e.com/private/a.png"))


async def test_configuration_errors() -> None:
    """Bad limits, balances, sources and server names are refused."""
    with pytest.raises(ValueError, match="queue_limit"):
        FakeModelsLab(queue_limit=-1)
    with pytest.raises(ValueError, match="balance"):
        FakeModelsLab(balance=-1)
    with pytest.raises(ValueError, match="models"):
        FakeServerSpec("a", "k", models=())
    fake = FakeModelsLab(1)
    with pytest.raises(KeyError):
        fake.set_queue_limit("nope", 1)
    with pytest.raises(ValueError, match="host name"):
        fake.add_unreachable(" ")
    with pytest.raises(ValueError, match="queue_limit"):
        fake.set_queue_limit("server-1", -2)


@pytest.mark.parametrize(
    "text",
    ["nope", "busy,zz=1", "busy,count", "slow,delay=-1", "drop,after_accept=maybe", "busy=x"],
)
def test_bad_fault_text(text: str) -> None:
    """A fault written wrong is a ValueError naming the problem."""
    with pytest.raises(ValueError):
        fault_from_text(text)


@pytest.mark.parametrize(
    "data",
    [None, {}, {"kind": "busy", "color": 1}, {"kind": "busy", "count": "2"}, {"kind": 3}],
)
def test_bad_fault_json(data: Any) -> None:
    """A fault sent as JSON with unknown fields or wrong types is refused."""
    with pytest.raises(ValueError):
        fault_from_json(data)


async def test_control_refuses_bad_requests(http: aiohttp.ClientSession) -> None:
    """The control endpoint answers 400 to bodies it cannot use, and changes nothing."""
    async with FakeModelsLab(specs()) as fake:
        root = f"{fake.root_url}/_fake"
        for path, body in (
            ("faults", {"kind": "nope"}),
            ("faults", {"spec": "busy,zz=1"}),
            ("account", {"balance": -2}),
            ("account", {"money": 2}),
            ("unreachable", {"source": ""}),
            ("servers/gpu-a", {"queue_limit": -1}),
            ("servers/gpu-a", {"down": True, "speed": 2}),
        ):
            status, _ = await post(http, f"{root}/{path}", body)
            assert 400 == status, path
        assert [] == fake.pending_faults()
        assert fake.balance is None
        status, answer = await post(http, f"{root}/servers/gpu-a", {"queue_limit": 3})
        assert (200, 3) == (status, answer["queue_limit"])
