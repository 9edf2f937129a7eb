"""Helpers shared by the tests."""

from __future__ import annotations

from typing import Any

from modelslab_async import HealthPolicy, Img2ImgRequest, PollPolicy
from modelslab_async._decisions import judge
from modelslab_async._pool import scheduler_of

IMAGE_URL = "https://example.com/cat.png"
KEYS = ["secret-key-alpha-0001", "secret-key-bravo-0002", "secret-key-charlie-0003"]

FAST_POLL = PollPolicy(initial_interval=0.01, min_interval=0.001, max_interval=0.05, jitter=0)


def make_request(**overrides: Any) -> Img2ImgRequest:
    fields: dict[str, Any] = {
        "model_id": "realistic-vision-51",
        "prompt": "a cat",
        "init_image": IMAGE_URL,
    }
    fields.update(overrides)
    return Img2ImgRequest(**fields)


FAST_HEALTH = HealthPolicy(rate_limit_cooldown=0.01, busy_cooldown=0.01, reset_timeout=0.05)


def record_failure(pool: Any, index: int, error: Exception) -> None:
    """Account a failed call against the pool's ``index``-th route, as a job would."""
    scheduler = scheduler_of(pool)
    text = f"{type(error).__name__}: {getattr(error, 'message', error)}"
    scheduler.record_failure(scheduler.routes[index], judge(error), text, probe=False)
