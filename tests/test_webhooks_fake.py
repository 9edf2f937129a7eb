"""The fake calls webhooks back like ModelsLab: final payloads, best effort, maybe twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault, WebhookAttempt
from modelslab_async.testing.__main__ import _parser

from .contract.standalone import standalone

KEY = "sk-webhook-test-key-1"
BODY = {"model_id": "realistic-vision-51", "prompt": "a fox", "init_image": "https://e.com/f.png"}


@attrs.define
class Catcher:
    """A loopback server that keeps every callback it gets."""

    url: str
    calls: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    status: int = 200


@pytest.fixture
async def catcher() -> AsyncIterator[Catcher]:
    app = web.Application()
    found = Catcher("")

    async def hook(request: web.Request) -> web.Response:
        found.calls.append((request.match_info["token"], await request.json()))
        return web.json_response({"ok": True}, status=found.status)

    app.router.add_post("/hooks/{token}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    try:
        yield found
    finally:
        await runner.cleanup()


def fake_of(**options: Any) -> FakeModelsLab:
    spec = FakeServerSpec("server-1", KEY, slots=4, service_time=0.02)
    return FakeModelsLab([spec], processing_threshold=0.0, seed=5, **options)


async def submit(fake: FakeModelsLab, **fields: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        body = {"key": KEY, **BODY, **fields}
        async with http.post(f"{fake.base_url}/img2img", json=body) as answer:
            result: dict[str, Any] = await answer.json()
            return result


async def test_a_finished_job_posts_its_success_body_with_track_id(catcher: Catcher) -> None:
    """The normal success answer plus track_id, to the job's own URL, once."""
    async with fake_of() as fake:
        queued = await submit(fake, webhook=f"{catcher.url}/tok-1", track_id="job-1")
        await fake.wait_webhooks()
    assert "processing" == queued["status"]
    [(token, payload)] = catcher.calls
    assert "tok-1" == token
    assert ("success", queued["id"], "job-1") == (
        payload["status"],
        payload["id"],
        payload["track_id"],
    )
    assert queued["future_links"] == payload["output"]
    assert {"generationTime", "meta", "proxy_links", "webhook_status"} <= set(payload)
    assert "key" not in json.dumps(payload).replace('"key_', "")
    [attempt] = fake.webhooks
    assert attempt == WebhookAttempt(
        at=attempt.at,
        request_id=str(queued["id"]),
        track_id="job-1",
        target=catcher.url.split("/")[2],
        job_status="success",
        outcome="sent",
        http_status=200,
    )


async def test_a_failed_job_posts_the_documented_failure(catcher: Catcher) -> None:
    """{"status": "failed", "id", "message", "track_id"} and nothing else."""
    async with fake_of() as fake:
        fake.add_fault(Fault.fail(message="GPU fell over", count=1))
        queued = await submit(fake, webhook=f"{catcher.url}/t", track_id="job-2")
        await fake.wait_webhooks()
    expected = {"status": "failed", "id": queued["id"], "message": "GPU fell over"}
    assert [{**expected, "track_id": "job-2"}] == [payload for _, payload in catcher.calls]
    assert ["failed"] == [attempt.job_status for attempt in fake.webhooks]


async def test_a_job_whose_answer_was_lost_still_calls_back(catcher: Catcher) -> None:
    """Dropped connection after accept: the webhook is how the id can be learnt."""
    async with fake_of() as fake:
        fake.add_fault(Fault.drop(after_accept=True, count=1))
        with pytest.raises(aiohttp.ClientError):
            await submit(fake, webhook=f"{catcher.url}/t", track_id="lost")
        await fake.wait_webhooks()
    [(_, payload)] = catcher.calls
    assert ("success", "lost") == (payload["status"], payload["track_id"])


@pytest.mark.parametrize(
    "url",
    ["https://example.com/hooks/t", "http://10.1.2.3/t", "http://127.0.0.1.nip.io/t"],
)
async def test_only_loopback_urls_are_called(url: str) -> None:
    """Any other URL is refused and recorded; nothing leaves the machine."""
    async with fake_of() as fake:
        await submit(fake, webhook=url, track_id="x")
        await fake.wait_webhooks()
        [attempt] = fake.webhooks
    assert ("refused", "x") == (attempt.outcome, attempt.track_id)
    assert "/t" not in attempt.target


@pytest.mark.parametrize("url", ["http://[::1/t", "ftp://127.0.0.1/t"])
async def test_a_webhook_that_is_no_http_url_is_refused_at_submit(url: str) -> None:
    """The request is refused with the validation message; no callback is scheduled."""
    async with fake_of() as fake:
        answer = await submit(fake, webhook=url, track_id="x")
        await fake.wait_webhooks()
        assert [] == fake.webhooks
    assert "error" == answer["status"]
    assert "webhook" in answer["message"]


async def test_drop_and_duplicate(catcher: Catcher) -> None:
    """drop=1: recorded, not sent; duplicate=1: the same payload twice."""
    async with fake_of(webhook_drop=1.0) as fake:
        await submit(fake, webhook=f"{catcher.url}/t", track_id="a")
        await fake.wait_webhooks()
        assert ["dropped"] == [attempt.outcome for attempt in fake.webhooks]
    assert [] == catcher.calls
    async with fake_of(webhook_duplicate=1.0) as fake:
        await submit(fake, webhook=f"{catcher.url}/t", track_id="b")
        await fake.wait_webhooks()
        assert [(1, "sent"), (2, "sent")] == [(a.copy, a.outcome) for a in fake.webhooks]
    assert 2 == len(catcher.calls)
    assert catcher.calls[0] == catcher.calls[1]


async def test_failures_are_recorded_never_raised(catcher: Catcher) -> None:
    """A receiver that is gone, or answers 500, is recorded; the fake carries on."""
    catcher.status = 500
    async with fake_of() as fake:
        await submit(fake, webhook=f"{catcher.url}/t", track_id="a")
        await submit(fake, webhook="http://127.0.0.1:9/nobody", track_id="b")
        await fake.wait_webhooks()
        outcomes = {a.track_id: (a.outcome, a.http_status) for a in fake.webhooks}
        errors = [a.error for a in fake.webhooks if a.outcome == "error"]
    assert {"a": ("sent", 500), "b": ("error", None)} == outcomes
    assert all(error and len(error) <= 120 for error in errors)


async def test_delay_and_stop_cancels_pending_callbacks(catcher: Catcher) -> None:
    """A callback waits webhook_delay after the job's end; stop() cancels it, recorded."""
    async with fake_of(webhook_delay=0.15) as fake:
        queued = await submit(fake, webhook=f"{catcher.url}/t", track_id="soon")
        started = asyncio.get_running_loop().time()
        await fake.wait_webhooks()
        assert asyncio.get_running_loop().time() - started >= 0.15 - queued["eta"]
    async with fake_of(webhook_delay=30) as fake:
        await submit(fake, webhook=f"{catcher.url}/t", track_id="never")
    assert ["cancelled"] == [attempt.outcome for attempt in fake.webhooks]
    assert ["soon"] == [payload["track_id"] for _, payload in catcher.calls]


async def test_the_draws_are_seeded(catcher: Catcher) -> None:
    """The same seed and submit order drop and duplicate the same callbacks."""
    runs = []
    for _ in range(2):
        async with fake_of(webhook_drop=0.5, webhook_duplicate=0.5) as fake:
            for n in range(12):
                await submit(fake, webhook=f"{catcher.url}/t", track_id=f"j{n}")
            await fake.wait_webhooks()
            runs.append(sorted((a.track_id or "", a.outcome, a.copy) for a in fake.webhooks))
    assert runs[0] == runs[1]
    assert {"dropped", "sent"} == {outcome for _, outcome, _ in runs[0]}


async def test_the_control_endpoint_lists_and_clears_webhooks(catcher: Catcher) -> None:
    """GET /_fake/webhooks shows the attempts (no key, no token); DELETE forgets them."""
    async with fake_of() as fake:
        await submit(fake, webhook=f"{catcher.url}/secret-token", track_id="a")
        await fake.wait_webhooks()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{fake.root_url}/_fake/webhooks") as answer:
                listed = await answer.json()
            async with http.delete(f"{fake.root_url}/_fake/webhooks") as answer:
                assert listed == await answer.json()
        assert [] == fake.webhooks
    assert ["sent"] == [attempt["outcome"] for attempt in listed]
    assert "secret-token" not in json.dumps(listed)
    assert KEY not in json.dumps(listed)


@pytest.mark.parametrize(
    "options",
    [{"webhook_drop": 1.5}, {"webhook_duplicate": -0.1}, {"webhook_delay": float("inf")}],
)
def test_bad_webhook_options_are_refused(options: dict[str, Any]) -> None:
    """Probabilities are 0..1 and the delay finite."""
    with pytest.raises(ValueError, match="webhook_"):
        fake_of(**options)


def test_serve_takes_the_webhook_options() -> None:
    """--webhook-drop, --webhook-duplicate and --webhook-delay parse, and bad ones do not."""
    args = _parser().parse_args(
        ["serve", "--webhook-drop", "0.3", "--webhook-duplicate", "0.1", "--webhook-delay", "2"]
    )
    assert (0.3, 0.1, 2.0) == (args.webhook_drop, args.webhook_duplicate, args.webhook_delay)
    for bad in (["--webhook-drop", "2"], ["--webhook-delay", "-1"], ["--webhook-drop", "x"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["serve", *bad])


async def test_the_standalone_fake_calls_back(catcher: Catcher) -> None:
    """Out of process, with --webhook-duplicate 1: two callbacks for one job."""
    options = ["--service-time", "0.02", "--webhook-duplicate", "1", "--webhook-delay", "0.01"]
    with standalone(*options, keys=[KEY]) as fake:
        async with aiohttp.ClientSession() as http:
            body = {"key": KEY, **BODY, "webhook": f"{catcher.url}/t", "track_id": "solo"}
            async with http.post(f"{fake.base_url}/img2img", json=body) as answer:
                assert "success" == (await answer.json())["status"]
            for _ in range(200):
                if len(catcher.calls) == 2:
                    break
                await asyncio.sleep(0.01)
        assert "Webhooks: drop 0, duplicate 1, delay 0.01s" in fake.output
    assert ["solo", "solo"] == [payload["track_id"] for _, payload in catcher.calls]
