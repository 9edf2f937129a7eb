"""No API key ever shows up: not in logs, errors, reprs, events, outcomes or snapshots."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from modelslab_async import (
    Client,
    HealthPolicy,
    JobEvent,
    RetryPolicy,
    Server,
    ServerPool,
    Timeouts,
    fingerprint,
)
from modelslab_async._pool import scheduler_of
from modelslab_async._secrets import redact_body
from modelslab_async.testing import FakeModelsLab, FakeServerSpec, Fault

from ._helpers import make_request

KEYS = ["sk-live-7f3a9c2e4b1d-primary", "sk-live-0e8d7c6b5a49-secondary"]


async def test_a_failing_run_leaks_no_key(caplog: pytest.LogCaptureFixture) -> None:
    """Scan every log line, error, attempt, repr, event and outcome of a failing run for keys."""
    caplog.set_level(logging.DEBUG)
    specs = [
        FakeServerSpec(name=f"gpu-{i}", key=key, service_time=0.3) for i, key in enumerate(KEYS)
    ]
    seen: list[Any] = []
    async with FakeModelsLab(specs, processing_threshold=0.1, seed=3) as fake:
        for fault in (
            Fault.server_error(status=500, count=3),
            Fault.rate_limit(retry_after=0.01, count=2),
            Fault.drop(count=1),
            Fault.malformed(count=1),
            Fault.error_200("Model not found: x", count=1),
        ):
            fake.add_fault(fault)
        pool = ServerPool(
            [Server(key=k, name=s.name) for k, s in zip(KEYS, specs, strict=True)],
            health=HealthPolicy(failure_threshold=2, reset_timeout=0.05),
        )
        async with Client(
            pool,
            base_url=fake.base_url,
            retry=RetryPolicy.no_wait(attempts=3),
            timeouts=Timeouts(job=0.2),
        ) as client:
            events: list[JobEvent] = []
            outcomes = [
                o async for o in client.img2img_batch([make_request()] * 8, on_event=events.append)
            ]
            async with Client(["sk-bad-key-never-valid-123"], base_url=fake.base_url) as bad:
                with pytest.raises(Exception) as caught:
                    await bad.img2img(make_request())
                seen.append(bad)
            routes = scheduler_of(pool).routes
            seen += [client, pool, client.pool.snapshot(), routes, pool.servers, events]
            seen += [caught.value, caught.value.__cause__]
            seen += [
                (o, o.error, o.attempts, o.result, o.error.__cause__ if o.error else None)
                for o in outcomes
            ]
        seen += [fake, fake.received, fake.stats(), fake.specs]
    assert any(not o.ok for o in outcomes), "the run was meant to fail somewhere"
    text = "\n".join([*(repr(x) for x in seen), *(str(x) for x in seen), caplog.text])
    for key in [*KEYS, "sk-bad-key-never-valid-123"]:
        assert key not in text
    assert fingerprint(KEYS[0]) in text


def test_redacted_bodies_hide_every_secret_field() -> None:
    """Bodies prepared for logs carry no key (nor S3 secrets)."""
    body = {"key": "k1", "sync_key": "k2", "aws_secret_access_key": "k3", "prompt": "p"}
    assert {
        "key": "<redacted>",
        "sync_key": "<redacted>",
        "aws_secret_access_key": "<redacted>",
        "prompt": "p",
    } == redact_body(body)


def test_fingerprints_are_short_stable_and_distinct() -> None:
    """A fingerprint identifies a key without revealing it."""
    assert fingerprint(KEYS[0]) == fingerprint(KEYS[0])
    assert fingerprint(KEYS[0]) != fingerprint(KEYS[1])
    assert 10 == len(fingerprint(KEYS[0]))
