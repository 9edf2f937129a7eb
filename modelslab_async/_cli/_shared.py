"""The pool's shared state on Redis for a command (``--redis``), and Redis errors as exits."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .. import CoordinationBackend, InvalidRequestError

if TYPE_CHECKING:
    from ..redis import Batch

__all__ = ["open_batch", "redis_errors", "shared_backend"]


@contextlib.asynccontextmanager
async def shared_backend(
    redis_url: str | None, *, lease_ttl: float = 30.0
) -> AsyncIterator[CoordinationBackend | None]:
    """A RedisBackend on ``redis_url`` (None without one), checked and closed at the end."""
    if redis_url is None:
        yield None
        return
    from ..redis import BackendUnavailableError, RedisBackend  # noqa: PLC0415 - optional

    backend = RedisBackend.from_url(redis_url, lease_ttl=lease_ttl)
    try:
        await backend.__aenter__()
    except BackendUnavailableError as error:
        raise InvalidRequestError("--redis", f"cannot reach Redis: {_reason(error)}") from None
    try:
        yield backend
    finally:
        await backend.aclose()


@contextlib.asynccontextmanager
async def open_batch(redis_url: str | None, name: str, **options: Any) -> AsyncIterator[Batch]:
    """The named batch on Redis, its connection checked; closed at the end."""
    if redis_url is None:
        raise InvalidRequestError(
            "--redis", "no Redis: pass --redis URL or set MODELSLAB_REDIS_URL"
        )
    try:
        from ..redis import Batch  # noqa: PLC0415 - the redis extra is optional
    except ImportError as error:
        raise InvalidRequestError("--redis", str(error)) from None
    batch = Batch.from_url(redis_url, name, **options)
    try:
        async with redis_errors():
            await batch.db.ping()
        yield batch
    finally:
        await batch.aclose()


@contextlib.asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Redis failures as :class:`InvalidRequestError` (exit 2), never showing the URL."""
    from redis.exceptions import RedisError  # noqa: PLC0415

    try:
        yield
    except RedisError as error:
        raise InvalidRequestError("--redis", f"Redis failed: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    cause = error.__cause__ or error
    text = str(cause).split("@")[-1]  # a password in a URL never reaches the terminal
    return f"{type(cause).__name__}: {text[:200]}"
