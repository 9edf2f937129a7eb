"""
Webhook callbacks across the worker processes of one web app, over Redis pub/sub.

A web app often runs several worker processes behind one public URL; ModelsLab's callback for
a job lands on whichever the load balancer picks. Every process's :class:`WebhookReceiver`
(all with the same ``secret``) checks the token; one that does not await the job publishes the
callback on the namespace's channel (and keeps it a while under the job's ``track_id``), and
the process that awaits it settles its job. Jobs are only ever settled by the process that
submitted them. Pub/sub may lose a message (a reconnect): polling, which never stops, still
ends the job.
"""

from __future__ import annotations

import asyncio
import json
import logging
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .._webhooks import WebhookReceiver

__all__ = ["RedisWebhookRelay"]

logger = logging.getLogger("modelslab_async")

#: How long a relayed callback is kept in Redis, in seconds.
KEEP = 3600


class RedisWebhookRelay:
    """
    Carries webhook callbacks between the processes of one app (see the module).

    Use one per process: ``relay = RedisWebhookRelay.from_url(url)``, give it to the
    receiver (``WebhookReceiver(public_url, secret=..., relay=relay)``), and run it:
    ``async with relay:`` listens for callbacks other processes received.

    Args:
        client: A ``redis.asyncio.Redis``; closed on exit only when built by :meth:`from_url`.
        namespace: Prefix of the channel and keys; the app's processes share it.
    """

    def __init__(self, client: Redis, *, namespace: str = "modelslab") -> None:
        self._client = client
        self._owns_client = False
        self._channel = f"{{{namespace}}}:webhooks"
        self._prefix = f"{{{namespace}}}:webhook:"
        self._receivers: list[WebhookReceiver] = []
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "modelslab") -> RedisWebhookRelay:
        """A relay on its own connection to the Redis at ``url``."""
        relay = cls(Redis.from_url(url), namespace=namespace)
        relay._owns_client = True
        return relay

    def __repr__(self) -> str:
        return f"<RedisWebhookRelay {self._channel} receivers={len(self._receivers)}>"

    def attach(self, receiver: WebhookReceiver) -> None:
        """Deliver relayed callbacks to ``receiver`` (a receiver given this relay is attached)."""
        if receiver not in self._receivers:
            self._receivers.append(receiver)

    async def publish(self, track_id: str, body: bytes) -> None:
        """Keep a verified callback a while and announce it to every process."""
        message = json.dumps({"track_id": track_id, "body": body.decode("utf-8", "replace")})
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._prefix + track_id, message, ex=KEEP)
            pipe.publish(self._channel, message)
            await pipe.execute()

    async def __aenter__(self) -> Self:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._listen(), name="modelslab-webhook-relay")
        await self._listening.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        try:
            if self._task is not None:
                self._task.cancel()
            if group is not None:
                await group.__aexit__(None, None, None)
        finally:
            if self._owns_client:
                await self._client.aclose()

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            self._listening.set()
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except (RedisError, OSError) as error:
                    logger.warning("webhook relay lost Redis (%s); polling covers", error)
                    await asyncio.sleep(1.0)
                    continue
                if message is not None:
                    self._deliver(message.get("data"))
        finally:
            self._listening.set()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _deliver(self, data: Any) -> None:
        try:
            message = json.loads(data)
            track_id, body = str(message["track_id"]), str(message["body"]).encode()
        except (ValueError, TypeError, KeyError):
            return
        for receiver in self._receivers:
            receiver.deliver(track_id, body)
