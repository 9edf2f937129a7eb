"""Tests of modelslab_async.testing, the fake ModelsLab enterprise API, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from modelslab_async._secrets import fingerprint
from modelslab_async.testing import (
    FakeModelsLab,
    FakeServerSpec,
    FakeServerStats,
    Fault,
    ReceivedRequest,
)

KEYS = ("sk-alpha-secret-0001", "sk-bravo-secret-0002", "sk-charlie-secret-0003")
SPECS = [
    FakeServerSpec(f"server-{n}", key, slots=2, service_time=0.02)
    for n, key in enumerate(KEYS, start=1)
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)
REPO = Path(__file__).resolve().parent.parent

MakeFake = Callable[..., Awaitable[FakeModelsLab]]


def job_body(key: str, **fields: Any) -> dict[str, Any]:
    """Return a valid img2img body with the documented string-typed numbers."""
    body: dict[str, Any] = {
        "key": key,
        "model_id": "realistic-vision-51",
        "prompt": "a red fox in the snow",
        "negative_prompt": None,
        "init_image": "https://example.com/fox.png",
        "width": "512",
        "height": "512",
        "samples": "1",
        "num_inference_steps": "31",
        "guidance_scale": 7.5,
        "strength": 0.7,
        "seed": None,
        "webhook": None,
        "track_id": None,
    }
    body.update(fields)
    return body


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, Any]]:
    """POST a JSON body and return the status and the decoded JSON answer."""
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test during which aiohttp or the fake logged a warning or an error."""
    caplog.set_level(logging.WARNING)
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    problems = [r for r in records if r.levelno >= logging.WARNING]
    assert [f"{r.name}: {r.getMessage()}" for r in problems] == []


@pytest.fixture
async def make_fake() -> AsyncIterator[MakeFake]:
    """Start fakes on demand and stop them all at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(servers: Any = SPECS, **options: Any) -> FakeModelsLab:
            options.setdefault("seed", 7)
            return await stack.enter_async_context(FakeModelsLab(servers, **options))

        yield factory


@pytest.fixture
async def fake(make_fake: MakeFake) -> FakeModelsLab:
    """A fake of three servers that answers every job within the held request."""
    return await make_fake(processing_threshold=1.0)


@pytest.fixture
async def queued(make_fake: MakeFake) -> FakeModelsLab:
    """A fake of three servers that answers every job 'processing'."""
    return await make_fake(processing_threshold=0.0)


@pytest.fixture
async def slow_queued(make_fake: MakeFake) -> FakeModelsLab:
    """A fake of three servers taking 0.2 s per job, answering every job 'processing'."""
    specs = [FakeServerSpec(s.name, s.key, slots=2, service_time=0.2) for s in SPECS]
    return await make_fake(specs, processing_threshold=0.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


# Shapes of the answers -----------------------------------------------------------------------


async def test_submit_success_shape(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """A job that finishes within the threshold is answered success with outputs and meta."""
    status, body = await post(
        http, f"{fake.base_url}/img2img", job_body(KEYS[1], samples="2", track_id="t-1")
    )
    assert status == 200
    expected_keys = {
        "status",
        "generationTime",
        "id",
        "output",
        "proxy_links",
        "nsfw_content_detected",
        "webhook_status",
        "tip",
        "meta",
    }
    assert expected_keys == set(body)
    assert body["status"] == "success"
    assert body["id"] == 13443927
    assert len(body["output"]) == 2
    assert body["output"] == body["proxy_links"]
    prefix = body["meta"]["file_prefix"]
    assert [f"{fake.root_url}/generations/{prefix}-{i}.png" for i in range(2)] == body["output"]
    assert pytest.approx(0.02) == body["generationTime"]
    assert False is body["nsfw_content_detected"]
    meta = body["meta"]
    assert (meta["prompt"], meta["model_id"]) == ("a red fox in the snow", "realistic-vision-51")
    assert (
        meta["W"],
        meta["H"],
        meta["steps"],
        meta["n_samples"],
        meta["guidance_scale"],
        meta["strength"],
    ) == (512, 512, 31, 2, 7.5, 0.7)
    assert meta["track_id"] == "t-1"
    assert isinstance(meta["seed"], int)
    assert meta["scheduler"] == "UniPCMultistepScheduler"


async def test_seed_is_echoed(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """A seed given in the request is echoed in meta."""
    _, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1], seed="1234"))
    assert body["meta"]["seed"] == 1234


async def test_processing_then_fetch_documented_path(
    slow_queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """A job past the threshold is answered processing and then fetched via /fetch."""
    base = slow_queued.base_url
    status, body = await post(http, f"{base}/img2img", job_body(KEYS[1], samples=2))
    assert status == 200
    assert body["status"] == "processing"
    expected_keys = {
        "status",
        "tip",
        "tip_1",
        "eta",
        "messege",
        "webhook_status",
        "fetch_result",
        "id",
        "output",
        "meta",
        "future_links",
    }
    assert expected_keys == set(body)
    assert body["messege"] == "Try to fetch request after seconds estimated"
    assert body["output"] == []
    assert len(body["future_links"]) == 2
    assert body["future_links"] == body["meta"]["output"]
    assert f"{base}/fetch/{body['id']}" == body["fetch_result"]
    assert isinstance(body["eta"], float)
    assert pytest.approx(0.2, abs=0.05) == body["eta"]

    fetch = {"key": KEYS[1], "request_id": body["id"]}
    _, early = await post(http, f"{base}/fetch", fetch)
    assert ("processing", body["id"], []) == (early["status"], early["id"], early["output"])
    assert body["future_links"] == early["future_links"]

    await asyncio.sleep(body["eta"] + 0.01)
    _, done = await post(http, f"{base}/fetch", {"key": KEYS[1], "request_id": str(body["id"])})
    expected = {
        "status": "success",
        "id": body["id"],
        "output": body["future_links"],
        "proxy_links": body["future_links"],
    }
    assert expected == done


async def test_processing_then_fetch_sdk_paths(
    queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """The SDK paths /images/img2img and /images/fetch/{id} work like the documented ones."""
    _, body = await post(http, f"{queued.base_url}/images/img2img", job_body(KEYS[2]))
    assert body["status"] == "processing"
    await asyncio.sleep(body["eta"] + 0.01)
    fetch_url = f"{queued.base_url}/images/fetch/{body['id']}"
    _, done = await post(http, fetch_url, {"key": KEYS[2]})
    assert ("success", body["future_links"]) == (done["status"], done["output"])
    _, again = await post(http, body["fetch_result"], {"key": KEYS[2]})
    assert again["status"] == "success"
    assert [r.endpoint for r in queued.received] == ["submit", "fetch", "fetch"]


async def test_fetch_with_another_key_is_refused(
    queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """Only the key that submitted a job may fetch it; other keys and unknown ids get an error."""
    _, body = await post(http, f"{queued.base_url}/img2img", job_body(KEYS[1]))
    not_found = {"status": "error", "message": "Request not found"}
    for key, request_id in ((KEYS[2], body["id"]), (KEYS[0], body["id"]), (KEYS[1], 99)):
        status, answer = await post(
            http, f"{queued.base_url}/fetch", {"key": key, "request_id": request_id}
        )
        assert (200, not_found) == (status, answer)
    _, missing = await post(http, f"{queued.base_url}/fetch", {"key": KEYS[1]})
    assert missing == {"status": "error", "message": "The request id field is required."}


# The load balancer ------------------------------------------------------------------------


async def test_balancer_spreads_first_key_jobs(
    slow_queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """Jobs sent with the first key are spread evenly over all servers."""
    for _ in range(6):
        await post(http, f"{slow_queued.base_url}/img2img", job_body(KEYS[0]))
    assert [s.accepted for s in slow_queued.stats()] == [2, 2, 2]
    records = slow_queued.received
    assert [r.balanced for r in records] == [True] * 6
    expected = ["server-1", "server-2", "server-3"] * 2
    assert expected == [r.server for r in records]
    assert {fingerprint(KEYS[0])} == {r.key_fingerprint for r in records}


async def test_balanced_job_is_fetched_with_first_key(
    slow_queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """A balanced job that ran on server-2 is fetched with the first key, not server-2's."""
    await post(http, f"{slow_queued.base_url}/img2img", job_body(KEYS[0], loadbalancer="yes"))
    _, body = await post(http, f"{slow_queued.base_url}/img2img", job_body(KEYS[0]))
    assert slow_queued.received[-1].server == "server-2"
    fetch = f"{slow_queued.base_url}/fetch"
    _, refused = await post(http, fetch, {"key": KEYS[1], "request_id": body["id"]})
    assert refused["status"] == "error"
    _, answer = await post(http, fetch, {"key": KEYS[0], "request_id": body["id"]})
    assert answer["id"] == body["id"]
    record = slow_queued.received[-1]
    assert (record.server, record.balanced) == ("server-2", True)
    # Both fetches reached server-2: the refused one directly with server-2's own key.
    assert slow_queued.stats()[1].fetches == 2


async def test_loadbalancer_no_pins_to_first_server(
    queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """With loadbalancer 'no' the first key's jobs all stay on server-1."""
    for _ in range(4):
        await post(http, f"{queued.base_url}/img2img", job_body(KEYS[0], loadbalancer="no"))
    assert [s.accepted for s in queued.stats()] == [4, 0, 0]
    assert [r.balanced for r in queued.received] == [False] * 4


async def test_direct_keys_go_to_their_server(
    queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """A server's own key always reaches that server."""
    for _ in range(3):
        await post(http, f"{queued.base_url}/img2img", job_body(KEYS[2]))
    assert [s.accepted for s in queued.stats()] == [0, 0, 3]


# Queueing and stats -------------------------------------------------------------------------


async def test_queueing_beyond_slots(make_fake: MakeFake, http: aiohttp.ClientSession) -> None:
    """More jobs than slots queue up: later ones finish later and max_outstanding counts all."""
    spec = FakeServerSpec("solo", "solo-key", slots=2, service_time=0.1)
    fake = await make_fake([spec], processing_threshold=0.0)
    url = f"{fake.base_url}/img2img"
    bodies = [(await post(http, url, job_body("solo-key")))[1] for _ in range(5)]
    first = fake.received[0].at
    finishes = [r.at - first + b["eta"] for r, b in zip(fake.received, bodies, strict=True)]
    # Two run at once; each later job starts when the job two places ahead of it finishes.
    gaps = [later - earlier for earlier, later in zip(finishes, finishes[2:], strict=False)]
    assert pytest.approx([0.1, 0.1, 0.1], abs=0.011) == gaps
    stats = fake.stats()[0]
    assert (stats.accepted, stats.max_outstanding) == (5, 5)
    await asyncio.sleep(0.32)
    stats = fake.stats()[0]
    expected = (5, 0, 5, 5)
    assert expected == (stats.completed, stats.outstanding, stats.max_outstanding, stats.submits)


async def test_held_requests_wait_for_their_slot(
    make_fake: MakeFake, http: aiohttp.ClientSession
) -> None:
    """Held submits beyond the slots answer one service time later than the first ones."""
    spec = FakeServerSpec("solo", "solo-key", slots=2, service_time=0.05)
    fake = await make_fake([spec], processing_threshold=1.0)
    url = f"{fake.base_url}/img2img"

    async def timed() -> float:
        start = time.monotonic()
        status, body = await post(http, url, job_body("solo-key"))
        assert (body["status"], status) == ("success", 200)
        return time.monotonic() - start

    durations = sorted(await asyncio.gather(*(timed() for _ in range(4))))
    assert durations[0] >= 0.045
    assert durations[2] >= 0.095
    assert durations[1] < durations[2] - 0.02
    assert fake.stats()[0].max_outstanding == 4


async def test_default_servers_and_stats(make_fake: MakeFake) -> None:
    """An int gives servers named server-N with keys fake-key-N and default settings."""
    fake = await make_fake(2)
    assert fake.keys == ["fake-key-1", "fake-key-2"]
    expected = FakeServerStats(
        name="server-2",
        key_fingerprint=fingerprint("fake-key-2"),
        slots=2,
        service_time=0.05,
        down=False,
        accepted=0,
        completed=0,
        outstanding=0,
        max_outstanding=0,
        submits=0,
        fetches=0,
    )
    assert expected == fake.stats()[1]
    assert fake.root_url + "/api/v1/enterprise" == fake.base_url


async def test_system_details_reports_queue_time(
    make_fake: MakeFake, http: aiohttp.ClientSession
) -> None:
    """system_details reports the seconds of work left on the key's own server."""
    specs = [FakeServerSpec(s.name, s.key, slots=2, service_time=0.5) for s in SPECS]
    fake = await make_fake(specs, processing_threshold=0.0)
    url = f"{fake.base_url}/system_details"
    _, idle = await post(http, url, {"key": KEYS[1]})
    assert idle == {"model_count": 3, "queue_time": 0.0, "status": "ok"}
    for _ in range(4):
        await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1]))
    _, busy = await post(http, url, {"key": KEYS[1]})
    assert pytest.approx(2.0, abs=0.1) == busy["queue_time"]
    _, other = await post(http, url, {"key": KEYS[2]})
    assert other["queue_time"] == 0.0


async def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll condition every millisecond until it holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def test_client_leaving_does_not_stop_the_job(
    make_fake: MakeFake, http: aiohttp.ClientSession
) -> None:
    """A held job still completes when its client gives up before the answer."""
    spec = FakeServerSpec("solo", "solo-key", slots=1, service_time=0.1)
    fake = await make_fake([spec], processing_threshold=1.0)
    pending = asyncio.create_task(post(http, f"{fake.base_url}/img2img", job_body("solo-key")))
    await wait_for(lambda: fake.stats()[0].accepted == 1)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert 0 == fake.stats()[0].completed
    await wait_for(lambda: fake.stats()[0].completed == 1)
    await wait_for(lambda: len(fake.received) == 1)


async def test_stop_cuts_held_requests(http: aiohttp.ClientSession) -> None:
    """Stopping the fake promptly disconnects a request it is still holding."""
    spec = FakeServerSpec("slow", "slow-key", slots=1, service_time=5.0)
    fake = FakeModelsLab([spec], processing_threshold=10.0)
    await fake.start()
    try:
        url = f"{fake.base_url}/img2img"
        pending = asyncio.create_task(post(http, url, job_body("slow-key")))
        await wait_for(lambda: fake.stats()[0].accepted == 1)
        start = time.monotonic()
    finally:
        await fake.stop()
    assert time.monotonic() - start < 1.0
    with pytest.raises(DISCONNECTED):
        await pending
    assert [r.status for r in fake.received] == [0]


# Validation ---------------------------------------------------------------------------------

VALIDATION_CASES = [
    ({"model_id": None}, "The model id field is required."),
    ({"prompt": ""}, "The prompt field is required."),
    ({"init_image": None}, "The init image field is required."),
    ({"prompt": 5}, "The prompt must be a string."),
    ({"width": "abc"}, "The width must be a number."),
    ({"width": 2048}, "The width may not be greater than 1024."),
    ({"width": "1020"}, "The width must be divisible by 8."),
    ({"height": "1032"}, "The height may not be greater than 1024."),
    ({"height": 510}, "The height must be divisible by 8."),
    ({"height": 0}, "The height must be at least 8."),
    ({"samples": 5}, "The samples must be between 1 and 4."),
    ({"samples": "0"}, "The samples must be between 1 and 4."),
    ({"samples": 1.5}, "The samples must be an integer."),
    ({"num_inference_steps": 30}, "The selected num inference steps is invalid."),
    ({"num_inference_steps": "50"}, "The selected num inference steps is invalid."),
    ({"guidance_scale": 25}, "The guidance scale must be between 1 and 20."),
    ({"guidance_scale": 0.5}, "The guidance scale must be between 1 and 20."),
    ({"strength": 1.5}, "The strength must be between 0 and 1."),
    ({"strength": "x"}, "The strength must be a number."),
    ({"clip_skip": 9}, "The clip skip must be between 1 and 8."),
    ({"scheduler": "FooScheduler"}, "The selected scheduler is invalid."),
    ({"safety_checker_type": "hide"}, "The selected safety checker type is invalid."),
    ({"safety_checker": "si"}, "The selected safety checker is invalid."),
    ({"enhance_prompt": "maybe"}, "The selected enhance prompt is invalid."),
    ({"tomesd": "YESS"}, "The selected tomesd is invalid."),
    ({"use_karras_sigmas": 1}, "The selected use karras sigmas is invalid."),
    ({"base64": "nope"}, "The selected base64 is invalid."),
    ({"base64": "TRUE"}, "The init image must be a valid base64 string."),
    ({"algorithm_type": "dpmsolver++"}, "The selected algorithm type is invalid."),
    ({"lora_strength": 0.05}, "The lora strength must be between 0.1 and 1."),
    ({"lora_strength": 2}, "The lora strength must be between 0.1 and 1."),
    ({"lora_strength": "0.5,1.5"}, "The lora strength must be between 0.1 and 1."),
    ({"webhook": "not a url"}, "The webhook must be a valid URL."),
    ({"track_id": 5}, "The track id must be a string."),
    ({"ip_adapter_id": "ip-adapter_xl"}, "The selected ip adapter id is invalid."),
    ({"ip_adapter_scale": 1.5}, "The ip adapter scale must be between 0 and 1."),
    ({"temp": "y"}, "The selected temp is invalid."),
    ({"loadbalancer": "on"}, "The selected loadbalancer is invalid."),
    ({"init_image": "ftp://example.com/a.png"}, "The init image must be a valid URL."),
    ({"init_image": "fox.png"}, "The init image must be a valid URL."),
    (
        {"init_image": "not base64 at all!", "base64": "yes"},
        "The init image must be a valid base64 string.",
    ),
    ({"seed": "x"}, "The seed must be an integer."),
    ({"model_id": None, "width": 4096}, "The model id field is required."),
    ({"width": 4096, "samples": 9}, "The width may not be greater than 1024."),
    ({"samples": 9, "scheduler": "Nope"}, "The samples must be between 1 and 4."),
]


@pytest.mark.parametrize(("fields", "message"), VALIDATION_CASES)
async def test_validation_rules(
    fake: FakeModelsLab, http: aiohttp.ClientSession, fields: dict[str, Any], message: str
) -> None:
    """Each invalid field is refused with its Laravel-style message; the first rule wins."""
    status, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1], **fields))
    assert (200, {"status": "error", "message": message}) == (status, body)
    assert fake.stats()[1].accepted == 0


ACCEPTED_CASES = [
    {"width": 1024, "height": "768", "samples": 4, "num_inference_steps": 41},
    {"guidance_scale": "20", "strength": "0", "clip_skip": "8", "seed": 42},
    {"scheduler": "LCMScheduler", "safety_checker_type": "pixelate", "safety_checker": "no"},
    {"enhance_prompt": "no", "tomesd": "yes", "use_karras_sigmas": "no", "temp": "yes"},
    {"lora_model": None, "vae": None, "clip_skip": None, "scheduler": None, "extra": [1]},
    {"init_image": "data:image/png;base64," + base64.b64encode(b"png").decode(), "base64": "yes"},
    {"safety_checker": True, "tomesd": "YES", "use_karras_sigmas": "true", "temp": "False"},
    {"algorithm_type": "dpmsolver+++", "scheduler": "DPMSolverMultistepScheduler"},
    {"lora_model": "contrast-fix,yae-miko-genshin", "lora_strength": "0.5, 1"},
    {"lora_strength": 0.1, "webhook": "https://example.com/hook", "track_id": "t-1"},
    {"ip_adapter_id": "ip-adapter_sd15", "ip_adapter_scale": 0.6},
]


@pytest.mark.parametrize("fields", ACCEPTED_CASES)
async def test_valid_bodies_are_accepted(
    fake: FakeModelsLab, http: aiohttp.ClientSession, fields: dict[str, Any]
) -> None:
    """Numbers as strings, nulls, base64 images and unknown extra fields are accepted."""
    _, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1], **fields))
    assert body["status"] == "success"


async def test_bad_json_and_keys(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """A body that is not a JSON object, a missing key and an unknown key are refused."""
    url = f"{fake.base_url}/img2img"
    async with http.post(url, data=b"not json") as response:
        assert (response.status, (await response.json())["status"]) == (200, "error")
    status, body = await post(http, url, [1, 2])
    assert (status, body["status"]) == (200, "error")
    status, body = await post(http, url, job_body(""))
    assert (status, body) == (401, {"status": "error", "message": "The key field is required."})
    status, body = await post(http, url, {"model_id": "m"})
    assert status == 401
    status, body = await post(http, url, job_body("sk-wrong-secret"))
    assert (status, body) == (401, {"status": "error", "message": "Invalid API key"})
    assert fingerprint("sk-wrong-secret") == fake.received[-1].key_fingerprint
    status, body = await post(http, f"{fake.base_url}/system_details", {"key": "sk-nope"})
    assert status == 401


# Faults -------------------------------------------------------------------------------------


async def test_rate_limit_fault(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """rate_limit answers 429 with Retry-After and retry_after once, then requests pass."""
    fake.add_fault(Fault.rate_limit(1.5))
    url = f"{fake.base_url}/img2img"
    async with http.post(url, json=job_body(KEYS[1])) as response:
        expected = {
            "status": "error",
            "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
            "retry_after": 1.5,
        }
        assert (429, "2", expected) == (
            response.status,
            response.headers["Retry-After"],
            await response.json(),
        )
    _, body = await post(http, url, job_body(KEYS[1]))
    assert body["status"] == "success"
    assert [(r.fault, r.status) for r in fake.received] == [("rate_limit", 429), (None, 200)]
    assert fake.pending_faults() == []


@pytest.mark.parametrize(
    ("status", "content_type", "marker"),
    [
        (500, "application/json", "Internal server error. Please try again."),
        (503, "application/json", "Service temporarily unavailable. Please try again later."),
        (502, "text/html", "<title>502 Bad Gateway</title>"),
        (504, "text/html", "<title>504 Gateway Timeout</title>"),
    ],
)
async def test_server_error_fault(
    fake: FakeModelsLab,
    http: aiohttp.ClientSession,
    status: int,
    content_type: str,
    marker: str,
) -> None:
    """server_error answers its status: JSON for 500/503, a gateway HTML page for 502/504."""
    fake.add_fault(Fault.server_error(status))
    async with http.post(f"{fake.base_url}/img2img", json=job_body(KEYS[1])) as response:
        text = await response.text()
        assert (status, content_type) == (response.status, response.content_type)
    assert marker in text
    assert fake.stats()[1].accepted == 0


async def test_drop_before_accept(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """drop closes the connection without an answer and creates no job."""
    fake.add_fault(Fault.drop())
    with pytest.raises(DISCONNECTED):
        await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1]))
    record = fake.received[-1]
    assert (record.status, record.fault, record.request_id) == (0, "drop", None)
    assert fake.stats()[1].accepted == 0
    _, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1]))
    assert body["status"] == "success"


async def test_drop_after_accept(queued: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """drop with after_accept loses the answer but the job runs and can be fetched."""
    queued.add_fault(Fault.drop(after_accept=True))
    with pytest.raises(DISCONNECTED):
        await post(http, f"{queued.base_url}/img2img", job_body(KEYS[1]))
    record = queued.received[-1]
    assert (record.status, record.fault, record.request_id) == (0, "drop", "13443927")
    assert queued.stats()[1].accepted == 1
    await asyncio.sleep(0.03)
    fetch = {"key": KEYS[1], "request_id": record.request_id}
    _, body = await post(http, f"{queued.base_url}/fetch", fetch)
    assert body["status"] == "success"


async def test_slow_fault(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """slow delays the answer by its delay and then answers normally."""
    fake.add_fault(Fault.slow(0.1))
    start = time.monotonic()
    _, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1]))
    assert body["status"] == "success"
    assert time.monotonic() - start >= 0.1
    assert fake.received[-1].fault == "slow"


async def test_malformed_fault(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """malformed answers 200 application/json with a truncated JSON body."""
    fake.add_fault(Fault.malformed())
    async with http.post(f"{fake.base_url}/img2img", json=job_body(KEYS[1])) as response:
        text = await response.text()
        assert (response.status, response.content_type) == (200, "application/json")
    assert text == '{"status": "success", "output": ['
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_error_200_fault(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """error_200 answers HTTP 200 with status error and the legacy messege key."""
    fake.add_fault(Fault.error_200("Model not found: foo"))
    status, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1]))
    assert (status, body) == (200, {"status": "error", "messege": "Model not found: foo"})


async def test_busy_fault(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """busy answers the processing form without an id and creates no job."""
    fake.add_fault(Fault.busy())
    status, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1]))
    assert status == 200
    assert (
        body["status"],
        body["messege"],
        body["output"],
    ) == ("processing", "try again later.", "")
    assert "id" not in body
    assert fake.stats()[1].accepted == 0


async def test_fault_route_matches_server_name(
    fake: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """A fault routed to server-2 leaves other servers alone and hits balanced jobs there."""
    fake.add_fault(Fault.error_200("x", route="server-2", count=None))
    url = f"{fake.base_url}/img2img"
    _, direct_other = await post(http, url, job_body(KEYS[2]))
    _, direct = await post(http, url, job_body(KEYS[1]))
    assert (direct_other["status"], direct["status"]) == ("success", "error")
    await post(http, url, job_body(KEYS[0], loadbalancer="no"))
    await post(http, url, job_body(KEYS[0]))
    expected = [
        ("server-3", None),
        ("server-2", "error_200"),
        ("server-1", None),
        ("server-1", None),
    ]
    assert expected == [(r.server, r.fault) for r in fake.received]


async def test_fault_route_balancer(queued: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """A 'balancer' fault hits first-key balanced requests only."""
    queued.add_fault(Fault.server_error(503, route="balancer", count=None))
    url = f"{queued.base_url}/img2img"
    statuses = [
        (await post(http, url, job_body(KEYS[0], loadbalancer="no")))[0],
        (await post(http, url, job_body(KEYS[1])))[0],
        (await post(http, url, job_body(KEYS[0])))[0],
        (await post(http, url, job_body(KEYS[0], loadbalancer="yes")))[0],
    ]
    assert statuses == [200, 200, 503, 503]


async def test_fault_endpoint_fetch(queued: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """A fetch fault leaves submits alone and hits the next fetch."""
    queued.add_fault(Fault.rate_limit(endpoint="fetch"))
    _, body = await post(http, f"{queued.base_url}/img2img", job_body(KEYS[1]))
    assert body["status"] == "processing"
    fetch = {"key": KEYS[1], "request_id": body["id"]}
    status, _ = await post(http, f"{queued.base_url}/fetch", fetch)
    assert status == 429
    status, answer = await post(http, f"{queued.base_url}/fetch", fetch)
    assert (200, body["id"]) == (status, answer["id"])


async def test_fault_endpoint_any_and_drop_on_fetch(
    queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """An 'any' fault hits system_details too; a fetch drop disconnects the client."""
    queued.add_fault(Fault.server_error(500, endpoint="any"))
    status, _ = await post(http, f"{queued.base_url}/system_details", {"key": KEYS[1]})
    assert status == 500
    _, body = await post(http, f"{queued.base_url}/img2img", job_body(KEYS[1]))
    queued.add_fault(Fault.drop(endpoint="fetch"))
    with pytest.raises(DISCONNECTED):
        await post(http, f"{queued.base_url}/fetch", {"key": KEYS[1], "request_id": body["id"]})


async def test_fault_counts(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """A fault fires count times; count None fires until the faults are cleared."""
    fake.add_fault(Fault.error_200("twice", route="server-2", count=2))
    fake.add_fault(Fault.busy(route="server-3", count=None))
    url = f"{fake.base_url}/img2img"
    second = [(await post(http, url, job_body(KEYS[1])))[1]["status"] for _ in range(3)]
    third = [(await post(http, url, job_body(KEYS[2])))[1]["status"] for _ in range(3)]
    assert (second, third) == (["error", "error", "success"], ["processing"] * 3)
    assert [(Fault.busy(route="server-3", count=None), None)] == fake.pending_faults()
    fake.clear_faults()
    _, body = await post(http, url, job_body(KEYS[2]))
    assert body["status"] == "success"


async def test_fault_probability(make_fake: MakeFake, http: aiohttp.ClientSession) -> None:
    """A fault with probability 0.5 hits some requests, drawn from the seeded generator."""
    fake = await make_fake(processing_threshold=0.0, seed=11)
    fake.add_fault(Fault.busy(count=None, probability=0.5))
    fake.add_fault(Fault.server_error(count=None, probability=0.0))
    url = f"{fake.base_url}/img2img"
    statuses = [(await post(http, url, job_body(KEYS[1])))[1]["status"] for _ in range(40)]
    busy = statuses.count("processing") - fake.stats()[1].accepted
    assert busy + fake.stats()[1].accepted == 40
    assert 5 < busy < 35
    assert sum(1 for r in fake.received if r.status == 500) == 0


async def test_fault_validation() -> None:
    """Invalid fault settings are refused at construction."""
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault.busy(probability=1.5)
    with pytest.raises(ValueError):
        Fault.server_error(200)
    with pytest.raises(ValueError):
        Fault.slow(1.0, count=0)


# Downed servers -----------------------------------------------------------------------------


async def test_set_down_direct_key(queued: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """A downed server answers its own key with a 502 gateway page, and recovers when back."""
    url = f"{queued.base_url}/img2img"
    _, body = await post(http, url, job_body(KEYS[1]))
    queued.set_down("server-2", True)
    assert queued.stats()[1].down
    async with http.post(url, json=job_body(KEYS[1])) as response:
        html = await response.text()
        assert (response.status, response.content_type) == (502, "text/html")
    assert "<title>502 Bad Gateway</title>" in html
    fetch = {"key": KEYS[1], "request_id": body["id"]}
    async with http.post(f"{queued.base_url}/fetch", json=fetch) as response:
        assert response.status == 502
    await asyncio.sleep(0.03)
    queued.set_down("server-2", False)
    _, answer = await post(http, f"{queued.base_url}/fetch", fetch)
    assert answer["status"] == "success"
    assert queued.stats()[1].accepted == 1
    with pytest.raises(KeyError):
        queued.set_down("server-9", True)


async def test_set_down_balancer(queued: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """The balancer skips downed servers and answers 503 JSON when all are down."""
    queued.set_down("server-1")
    queued.set_down("server-3")
    url = f"{queued.base_url}/img2img"
    for _ in range(3):
        _, body = await post(http, url, job_body(KEYS[0]))
        assert body["status"] == "processing"
    assert [s.accepted for s in queued.stats()] == [0, 3, 0]
    async with http.post(url, json=job_body(KEYS[0], loadbalancer="no")) as response:
        assert response.status == 502
    queued.set_down("server-2")
    status, body = await post(http, url, job_body(KEYS[0]))
    expected = {
        "status": "error",
        "message": "Service temporarily unavailable. Please try again later.",
    }
    assert (503, expected) == (status, body)


# Images -------------------------------------------------------------------------------------


async def test_images_exist_after_the_job_finishes(
    slow_queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """Output files are 404 until the job finishes and then valid PNGs."""
    _, body = await post(http, f"{slow_queued.base_url}/img2img", job_body(KEYS[1], samples=2))
    link = body["future_links"][1]
    async with http.get(link) as response:
        assert response.status == 404
    await asyncio.sleep(body["eta"] + 0.01)
    async with http.get(link) as response:
        data = await response.read()
        assert (response.status, response.content_type) == (200, "image/png")
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    prefix = body["meta"]["file_prefix"]
    for name in (f"{prefix}-2", "nothing-0", prefix):
        async with http.get(f"{slow_queued.root_url}/generations/{name}.png") as response:
            assert response.status == 404
    records = [r for r in slow_queued.received if r.endpoint == "image"]
    assert [r.status for r in records] == [404, 200, 404, 404, 404]


async def test_image_faults(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """Image faults apply to GET /generations: a server error, then a dropped connection."""
    _, body = await post(http, f"{fake.base_url}/img2img", job_body(KEYS[1]))
    fake.add_fault(Fault.server_error(500, endpoint="image"))
    # count=2: aiohttp retries an idempotent GET once after a disconnect.
    fake.add_fault(Fault.drop(endpoint="image", route="server-2", count=2))
    link = body["output"][0]
    async with http.get(link) as response:
        assert response.status == 500
    with pytest.raises(DISCONNECTED):
        async with http.get(link) as response:
            await response.read()
    async with http.get(link) as response:
        assert (await response.read())[:8] == PNG_SIGNATURE
    records = [r for r in fake.received if r.endpoint == "image"]
    assert [(r.status, r.fault) for r in records] == [
        (500, "server_error"),
        (0, "drop"),
        (0, "drop"),
        (200, None),
    ]


# Records and secrets ------------------------------------------------------------------------


async def test_records_never_contain_keys(
    queued: FakeModelsLab, http: aiohttp.ClientSession
) -> None:
    """No key appears in records, stats, specs or the fake's repr; base64 images are cut."""
    image = base64.b64encode(bytes(range(256)) * 4).decode()
    await post(
        http, f"{queued.base_url}/img2img", job_body(KEYS[0], init_image=image, base64="yes")
    )
    _, body = await post(http, f"{queued.base_url}/img2img", job_body(KEYS[1]))
    await post(http, f"{queued.base_url}/fetch", {"key": KEYS[1], "request_id": body["id"]})
    await post(http, f"{queued.base_url}/system_details", {"key": KEYS[2]})
    await post(http, f"{queued.base_url}/img2img", job_body("sk-unknown-secret"))
    text = repr((queued, queued.received, queued.stats(), SPECS, queued.pending_faults()))
    for key in (*KEYS, "sk-unknown-secret"):
        assert key not in text
    first = queued.received[0]
    assert isinstance(first, ReceivedRequest)
    assert "key" not in first.body
    assert image[:64] == first.body["init_image"]
    assert fingerprint(KEYS[0]) == first.key_fingerprint


async def test_max_records_keeps_the_newest(
    make_fake: MakeFake, http: aiohttp.ClientSession
) -> None:
    """received keeps at most max_records records, dropping the oldest."""
    fake = await make_fake(max_records=2)
    for n in range(3):
        await post(http, f"{fake.base_url}/system_details", {"key": KEYS[n]})
    assert [r.server for r in fake.received] == ["server-2", "server-3"]
    fake.clear_received()
    assert fake.received == []


async def test_unknown_route_is_other(fake: FakeModelsLab, http: aiohttp.ClientSession) -> None:
    """Requests to unknown paths get 404 and are recorded as 'other'."""
    status, _ = await post(http, f"{fake.base_url}/restart_the_world", {"key": KEYS[1]})
    async with http.get(f"{fake.base_url}/img2img") as response:
        get_status = response.status
    assert (status, get_status) == (404, 404)
    assert [r.endpoint for r in fake.received] == ["other", "other"]


async def test_lifecycle_errors(make_fake: MakeFake) -> None:
    """URLs need a started fake, and a running fake cannot be started twice."""
    idle = FakeModelsLab(1)
    with pytest.raises(RuntimeError):
        _ = idle.base_url
    await idle.stop()
    fake = await make_fake(1, api_prefix="custom/")
    assert fake.root_url + "/custom" == fake.base_url
    with pytest.raises(RuntimeError):
        await fake.start()


# The standalone server ----------------------------------------------------------------------


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """Read the child's stdout until a line starts with marker or the timeout passes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    output = b""
    deadline = time.monotonic() + timeout
    while not any(line.startswith(marker) for line in output.splitlines()):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            output += os.read(fd, 4096)
    return output


def test_serve_subprocess() -> None:
    """`serve` prints READY with the base URL, never a key, answers, and stops on SIGINT."""
    secrets = ("cli-secret-key-one", "cli-secret-key-two")
    env = {**os.environ, "MODELSLAB_API_KEYS": ",".join(secrets)}
    command = [sys.executable, "-m", "modelslab_async.testing", "serve", "--port", "0"]
    command += ["--servers", "5", "--service-time", "0.01"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        output = _read_until(proc, b"READY ", timeout=15)
        ready = [line for line in output.decode().splitlines() if line.startswith("READY ")]
        if len(ready) != 1:
            proc.kill()
            _, stderr = proc.communicate()
            pytest.fail(f"no READY line; stderr ends: {stderr.decode()[-2000:]}")
        base_url = ready[0].removeprefix("READY ")
        assert base_url.endswith("/api/v1/enterprise")
        parts = urlsplit(base_url)
        connection = HTTPConnection(parts.hostname or "", parts.port, timeout=5)
        payload = json.dumps({"key": secrets[1]})
        connection.request("POST", f"{parts.path}/system_details", payload)
        answer = json.loads(connection.getresponse().read())
        connection.close()
        assert answer == {"model_count": 3, "queue_time": 0.0, "status": "ok"}
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    everything = (output + stdout + stderr).decode()
    assert fingerprint(secrets[0]) in everything
    assert "server-3" not in everything
    for secret in secrets:
        assert secret not in everything
    assert "Traceback" not in everything
