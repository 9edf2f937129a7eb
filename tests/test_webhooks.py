"""WebhookReceiver: only a registered job's own, final callback resolves it, exactly once."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import types
from typing import Any

import pytest

import modelslab_async._webhooks as webhooks_module
from modelslab_async import InvalidRequestError, WebhookReceiver
from modelslab_async._webhooks import callbacks_of

PUBLIC = "https://api.example.com/hooks/"
SECRET = b"0123456789abcdef0123456789abcdef"


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def success(track_id: str, request_id: Any = 42, **more: Any) -> bytes:
    return body(
        status="success", id=request_id, output=["https://x/1.png"], track_id=track_id, **more
    )


def token_of(receiver: WebhookReceiver, track_id: str) -> str:
    return receiver.url_for(track_id).rsplit("/", 1)[1]


def post(receiver: WebhookReceiver, track_id: str, payload: bytes) -> tuple[int, str]:
    """Send a callback with the job's genuine token; return the status and the result."""
    status, answer = receiver.handle(token_of(receiver, track_id), {}, payload)
    return status, json.loads(answer)["result"]


@pytest.fixture
def receiver() -> WebhookReceiver:
    return WebhookReceiver(PUBLIC, secret=SECRET)


def test_url_is_public_url_plus_hmac_token(receiver: WebhookReceiver) -> None:
    """The URL ends in the unpadded urlsafe base64 of HMAC-SHA256(secret, track_id)."""
    import hashlib
    import hmac

    digest = hmac.new(SECRET, b"job-1", hashlib.sha256).digest()
    token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert f"https://api.example.com/hooks/{token}" == receiver.url_for("job-1")
    assert 43 == len(token)
    assert receiver.url_for("job-1") != receiver.url_for("job-2")


def test_the_same_secret_gives_the_same_urls_in_every_process() -> None:
    """A str secret is its UTF-8 bytes; a random secret differs per receiver."""
    shared = WebhookReceiver(PUBLIC, secret=SECRET.decode()).url_for("t")
    assert WebhookReceiver(PUBLIC, secret=SECRET).url_for("t") == shared
    assert WebhookReceiver(PUBLIC).url_for("t") != WebhookReceiver(PUBLIC).url_for("t")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com",
        "http://127.0.0.1:8080/hooks",
        "http://127.9.9.9/x",
        "http://localhost:1/hooks",
        "http://[::1]:9000/hooks",
    ],
)
def test_https_or_loopback_urls_are_accepted(url: str) -> None:
    """https anywhere; plain http only on loopback hosts."""
    assert WebhookReceiver(url).url_for("a").startswith(url.rstrip("/") + "/")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hooks",
        "http://10.0.0.1/hooks",
        "ftp://localhost/hooks",
        "/hooks",
        "https://example.com/hooks?x=1",
        "http://[::1",
    ],
)
def test_other_public_urls_are_refused(url: str) -> None:
    """Anything else raises InvalidRequestError naming public_url."""
    with pytest.raises(InvalidRequestError) as caught:
        WebhookReceiver(url)
    assert "public_url" == caught.value.field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"secret": b"short"}, "secret"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"late_after": -1.0}, "late_after"),
        ({"late_after": float("nan")}, "late_after"),
    ],
)
def test_unusable_settings_are_refused(kwargs: dict[str, Any], field: str) -> None:
    """A guessable secret or a nonsensical limit is refused up front."""
    with pytest.raises(InvalidRequestError) as caught:
        WebhookReceiver(PUBLIC, **kwargs)
    assert field == caught.value.field


async def test_a_final_callback_resolves_its_job(receiver: WebhookReceiver) -> None:
    """200, the parsed answer in the future, counted as accepted."""
    future = callbacks_of(receiver).expect("job-1", request_id="42")
    assert (200, "accepted") == post(receiver, "job-1", success("job-1"))
    result = await future
    assert ("success", "42", ("https://x/1.png",)) == (result.status, result.id, result.output)
    assert 1 == receiver.stats["accepted"]


async def test_expect_twice_returns_the_same_future(receiver: WebhookReceiver) -> None:
    """A second expect (or set_request_id) updates the request id of the same registration."""
    first = callbacks_of(receiver).expect("job-1")
    assert first is callbacks_of(receiver).expect("job-1", request_id="7")
    callbacks_of(receiver).set_request_id("nobody", "1")  # unknown: nothing happens
    assert 409 == post(receiver, "job-1", success("job-1", 8))[0]
    callbacks_of(receiver).set_request_id("job-1", "8")
    assert 200 == post(receiver, "job-1", success("job-1", 8))[0]
    assert "8" == first.result().id


async def test_a_failed_callback_resolves_with_the_failure(receiver: WebhookReceiver) -> None:
    """The documented failure form settles the job too (the runner raises from it)."""
    future = callbacks_of(receiver).expect("job-1", request_id="42")
    payload = body(status="failed", id=42, message="GPU fell over", track_id="job-1")
    assert 200 == post(receiver, "job-1", payload)[0]
    assert ("failed", "GPU fell over") == (future.result().status, future.result().message)


@pytest.mark.parametrize(
    "payload",
    [
        body(status="processing", id=42, eta=3, track_id="job-1"),
        body(status="success", id=42, output=[], track_id="job-1"),
        body(status="queued", id=42, track_id="job-1"),
    ],
)
async def test_non_final_callbacks_are_ignored(receiver: WebhookReceiver, payload: bytes) -> None:
    """processing (or success without output) answers 200 and leaves the job waiting."""
    future = callbacks_of(receiver).expect("job-1", request_id="42")
    assert (200, "ignored") == post(receiver, "job-1", payload)
    assert not future.done()
    assert 200 == post(receiver, "job-1", success("job-1"))[0]
    assert future.done()


async def test_a_duplicate_changes_nothing(receiver: WebhookReceiver) -> None:
    """The first final callback wins; later ones answer 200 and are counted."""
    future = callbacks_of(receiver).expect("job-1")
    post(receiver, "job-1", success("job-1", 42))
    assert (200, "duplicate") == post(receiver, "job-1", body(status="failed", track_id="job-1"))
    assert "success" == future.result().status
    assert (1, 1) == (receiver.stats["accepted"], receiver.stats["duplicates"])


async def test_an_unknown_id_is_learnt_from_the_callback(receiver: WebhookReceiver) -> None:
    """Without a request id yet (the submit answer was lost), the callback's id is taken."""
    future = callbacks_of(receiver).expect("job-1")
    post(receiver, "job-1", success("job-1", 99))
    assert "99" == future.result().id


async def test_an_id_mismatch_is_refused_and_logged(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """409, the job keeps waiting, one warning that shows neither token nor long text."""
    caplog.set_level(logging.DEBUG, logger="modelslab_async")
    future = callbacks_of(receiver).expect("job-1", request_id="42")
    status, _ = post(receiver, "job-1", success("job-1", "7" * 500))
    assert 409 == status
    assert not future.done()
    assert 1 == receiver.stats["mismatched"]
    assert ["WARNING"] == [record.levelname for record in caplog.records]
    assert token_of(receiver, "job-1") not in caplog.text
    assert "7" * 41 not in caplog.text
    assert 200 == post(receiver, "job-1", success("job-1", 42))[0]


async def test_a_forged_token_is_refused(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A token made for another track_id, or made up, is 404 and resolves nothing."""
    caplog.set_level(logging.DEBUG, logger="modelslab_async")
    future = callbacks_of(receiver).expect("victim", request_id="42")
    callbacks_of(receiver).expect("attacker")
    forged = token_of(receiver, "attacker")
    for token in (forged, "A" * 43, "", "ünïcode", token_of(receiver, "victim")[:-1]):
        status, _ = receiver.handle(token, {}, success("victim"))
        assert 404 == status
    assert not future.done()
    assert 5 == receiver.stats["forged"]
    assert forged not in caplog.text


@pytest.mark.parametrize(
    "payload",
    [
        body(status="success", id=42, output=["https://x/1.png"]),
        body(status="success", id=42, output=["https://x/1.png"], track_id=""),
        body(status="success", id=42, output=["https://x/1.png"], track_id=["victim"]),
    ],
)
async def test_a_payload_without_track_id_is_refused(
    receiver: WebhookReceiver, payload: bytes
) -> None:
    """The token is checked against the payload's own track_id: none, no trust."""
    future = callbacks_of(receiver).expect("victim")
    assert 404 == receiver.handle(token_of(receiver, "victim"), {}, payload)[0]
    assert not future.done()


async def test_a_numeric_track_id_is_read_as_text(receiver: WebhookReceiver) -> None:
    """A track_id echoed as a JSON number still matches its job."""
    future = callbacks_of(receiver).expect("1234")
    assert 200 == receiver.handle(token_of(receiver, "1234"), {}, success(1234))[0]  # type: ignore[arg-type]
    assert future.done()


def test_an_unregistered_job_is_refused(receiver: WebhookReceiver) -> None:
    """A genuine token for a job nobody awaits (another process, long ago) is 404."""
    assert 404 == post(receiver, "never", success("never"))[0]
    assert 1 == receiver.stats["unknown"]


async def test_late_callbacks_are_acknowledged_then_forgotten(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After forget: 200 "late" for late_after seconds, then 404; the future is untouched."""
    now = [1000.0]
    monkeypatch.setattr(webhooks_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    future = callbacks_of(receiver).expect("job-1")
    callbacks_of(receiver).forget("job-1")
    callbacks_of(receiver).forget("job-1")  # twice: nothing more happens
    assert (200, "late") == post(receiver, "job-1", success("job-1"))
    assert not future.done()
    now[0] += receiver.late_after + 1
    assert 404 == post(receiver, "job-1", success("job-1"))[0]
    assert (1, 1) == (receiver.stats["late"], receiver.stats["unknown"])


async def test_a_job_expected_again_after_forget_is_not_late(receiver: WebhookReceiver) -> None:
    """Registering the track_id again makes its callbacks count."""
    callbacks_of(receiver).expect("job-1")
    callbacks_of(receiver).forget("job-1")
    future = callbacks_of(receiver).expect("job-1")
    assert 200 == post(receiver, "job-1", success("job-1"))[0]
    assert future.done()
    assert 0 == receiver.stats["late"]


async def test_a_cancelled_future_makes_its_callbacks_late(receiver: WebhookReceiver) -> None:
    """Whoever awaited the job gave up: the callback is acknowledged and dropped."""
    callbacks_of(receiver).expect("job-1").cancel()
    assert (200, "late") == post(receiver, "job-1", success("job-1"))


@pytest.mark.parametrize(
    ("payload", "counter"),
    [
        (b"not json", "invalid"),
        (b"\xff\xfe", "invalid"),
        (b"[1, 2]", "invalid"),
        (b'"text"', "invalid"),
    ],
)
async def test_bodies_that_are_not_json_objects_are_400(
    receiver: WebhookReceiver, payload: bytes, counter: str
) -> None:
    """400, nothing resolved."""
    future = callbacks_of(receiver).expect("job-1")
    assert 400 == post(receiver, "job-1", payload)[0]
    assert 1 == receiver.stats[counter]
    assert not future.done()


async def test_a_payload_without_status_is_400(receiver: WebhookReceiver) -> None:
    """A good token with an unreadable answer resolves nothing."""
    future = callbacks_of(receiver).expect("job-1")
    assert 400 == post(receiver, "job-1", body(id=42, track_id="job-1"))[0]
    assert not future.done()


async def test_an_oversize_body_is_413() -> None:
    """Over the cap (by its length or its declared length): 413, nothing parsed."""
    receiver = WebhookReceiver(PUBLIC, secret=SECRET, max_body_bytes=200)
    future = callbacks_of(receiver).expect("job-1")
    big = success("job-1", padding="x" * 200)
    assert 413 == post(receiver, "job-1", big)[0]
    small = success("job-1")
    assert 413 == receiver.handle(token_of(receiver, "job-1"), {"Content-Length": "201"}, small)[0]
    assert not future.done()
    assert 2 == receiver.stats["oversize"]
    assert 200 == receiver.handle(token_of(receiver, "job-1"), {"content-length": "x"}, small)[0]


def test_stats_and_repr_show_counts_never_secrets(receiver: WebhookReceiver) -> None:
    """stats is a copy; the repr has the URL and counts, not the secret."""
    receiver.stats["received"] = 99
    assert 0 == receiver.stats["received"]
    assert "<WebhookReceiver https://api.example.com/hooks expected=0 late=0>" == repr(receiver)
    assert "https://api.example.com/hooks" == receiver.public_url


async def test_futures_resolve_across_tasks(receiver: WebhookReceiver) -> None:
    """A task awaiting the future wakes when a callback arrives."""
    future = callbacks_of(receiver).expect("job-1")
    waiter = asyncio.ensure_future(asyncio.wait_for(future, 1))
    await asyncio.sleep(0)
    post(receiver, "job-1", success("job-1"))
    assert "success" == (await waiter).status


@pytest.mark.parametrize("track_id", ["", None, 5])
def test_track_ids_must_be_text(receiver: WebhookReceiver, track_id: Any) -> None:
    """url_for and expect refuse empty or non-string track_ids."""
    with pytest.raises(InvalidRequestError):
        receiver.url_for(track_id)
