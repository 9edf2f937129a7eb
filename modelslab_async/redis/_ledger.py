"""The ledger of one batch in Redis: its keys, and one awaitable per Lua transition."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from attrs import frozen
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from .._errors import InvalidRequestError
from . import _ledger_lua as lua

__all__ = ["GROUP", "Batch", "Claim"]

GROUP = "workers"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
FINAL_STATES = ("succeeded", "failed")
STATES = ("queued", "submitting", "accepted", "generated", *FINAL_STATES)


@frozen(kw_only=True)
class Claim:
    """A job taken by an owner: its state then, and the ledger's fields."""

    job_id: str
    owner: str
    epoch: str
    state: str
    deliveries: int
    body: dict[str, Any] | None
    server: str | None
    request_id: str | None
    outputs: tuple[str, ...]
    attempts: int
    elapsed: float
    possible_duplicate: bool


class Batch:
    """
    One batch's ledger and stream in Redis (see :mod:`modelslab_async.redis`).

    Args:
        client: A ``redis.asyncio.Redis`` made with ``decode_responses=True``; closed by
            :meth:`aclose` only when built by :meth:`from_url`.
        name: The batch's name: letters, digits, ``.``, ``_`` and ``-``.
        namespace: The key prefix (use the pool's, so one Redis holds both).
        reclaim_after: Seconds after which a silent worker's jobs are taken over (and the
            lease of an owner of a job).
        max_deliveries: Takes without an outcome after which a job is dead-lettered.

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        client: Redis,
        name: str,
        *,
        namespace: str = "modelslab",
        reclaim_after: float = 30.0,
        max_deliveries: int = 5,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise InvalidRequestError("--batch", "use 1-100 letters, digits, '.', '_' or '-'")
        if not namespace or any(c in namespace for c in "{} \t\r\n"):
            raise InvalidRequestError("namespace", "a non-empty word without braces")
        if not reclaim_after > 0 or max_deliveries < 1:
            raise InvalidRequestError("reclaim_after", "must be > 0 (max_deliveries >= 1)")
        self.client = client
        # The same client, untyped: made with decode_responses=True, it answers str, not bytes.
        self.db: Any = client
        self.name = name
        self.namespace = namespace
        self.reclaim_after = reclaim_after
        self.max_deliveries = max_deliveries
        self.tag = "{" + f"{namespace}:b:{name}" + "}"
        self._owns_client = False
        register = client.register_script
        self._enqueue = register(lua.ENQUEUE)
        self._take = register(lua.TAKE)
        self._begin = register(lua.BEGIN_SUBMIT)
        self._accept = register(lua.ACCEPT)
        self._generate = register(lua.GENERATE)
        self._finish = register(lua.FINISH)
        self._hand_back = register(lua.HAND_BACK)
        self._heartbeat = register(lua.HEARTBEAT)

    @classmethod
    def from_url(cls, url: str, name: str, *, timeout: float = 5.0, **options: Any) -> Self:
        """Connect lazily to Redis at ``url`` (never logged: it may hold a password)."""
        client = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        batch = cls(client, name, **options)
        batch._owns_client = True
        return batch

    def __repr__(self) -> str:
        return f"<Batch {self.name!r} namespace={self.namespace!r}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the Redis client if this batch made it."""
        if self._owns_client:
            await self.client.aclose()

    # --- keys ---------------------------------------------------------------------------------

    def key(self, part: str) -> str:
        """A batch-wide key: meta, counts, ids, fin, stream, dead, workers, beats, wstats..."""
        return f"{self.tag}:{part}"

    def job_key(self, job_id: str) -> str:
        """The ledger hash of one job."""
        return f"{self.tag}:j:{job_id}"

    @property
    def lease_ms(self) -> int:
        """The lease (and reclaim idle time) in milliseconds."""
        return max(1, int(self.reclaim_after * 1000))

    # --- batch-wide ---------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if they are missing."""
        try:
            await self.client.xgroup_create(self.key("stream"), GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def counts(self) -> dict[str, int]:
        """Jobs per state, plus ``total``, ``duplicates`` and ``dead``; ``sealed`` is 0 or 1."""
        counts = await self.db.hgetall(self.key("counts"))
        meta = await self.db.hmget(self.key("meta"), "total", "sealed")
        found = {name: int(value) for name, value in counts.items()}
        found["total"] = int(meta[0] or 0)
        found["sealed"] = int(meta[1] or 0)
        return found

    async def complete(self) -> bool:
        """True when the whole manifest was enqueued and every job of it is final."""
        counts = await self.counts()
        done = sum(counts.get(state, 0) for state in FINAL_STATES)
        return bool(counts["sealed"]) and done >= counts["total"] > 0

    # --- transitions --------------------------------------------------------------------------

    async def add_to(
        self, pipe: Any, job_id: str, *, digest: str, line: int, state: str, payload: str
    ) -> None:
        """Queue ENQUEUE on a pipeline; its answer: 1 added, 0 there (same line), -1 changed."""
        keys = [self.job_key(job_id), *map(self.key, ("counts", "ids", "fin", "stream", "meta"))]
        await self._enqueue(keys, [job_id, digest, line, state, payload], client=pipe)

    async def take(self, job_id: str, owner: str) -> Claim | str:
        """TAKE: the claim, or ``"missing"``, ``"final"``, ``"busy"``."""
        found = await self._take([self.job_key(job_id)], [owner, self.lease_ms])
        if len(found) < 3:
            return str(found[0])
        state, epoch, deliveries, body, server, rid, outputs, attempts, elapsed, dup = found
        return Claim(
            job_id=job_id,
            owner=owner,
            epoch=epoch,
            state=state,
            deliveries=int(deliveries),
            body=json.loads(body) if body else None,
            server=server,
            request_id=rid,
            outputs=tuple(json.loads(outputs)) if outputs else (),
            attempts=int(attempts or 0),
            elapsed=float(elapsed or 0.0),
            possible_duplicate=dup == "1",
        )

    async def begin_submit(self, claim: Claim, server: str) -> int:
        """BEGIN_SUBMIT: 1 go, 0 no longer the owner, -1 accepted or later (never submit)."""
        keys = [self.job_key(claim.job_id), self.key("counts")]
        args: list[Any] = [claim.owner, claim.epoch, server, self.lease_ms]
        return int(await self._begin(keys, args))

    async def accept(self, claim: Claim, request_id: str, server: str) -> int:
        """ACCEPT: 1 recorded, 0 no longer the owner, -1 not submitting."""
        keys = [self.job_key(claim.job_id), self.key("counts")]
        return int(await self._accept(keys, [claim.owner, claim.epoch, request_id, server]))

    async def generate(
        self, claim: Claim, request_id: str | None, server: str, outputs: Sequence[str], dup: bool
    ) -> tuple[int, int, float, bool]:
        """GENERATE: (status, attempts, elapsed, possible duplicate); status as for accept."""
        keys = [self.job_key(claim.job_id), self.key("counts")]
        args = [claim.owner, claim.epoch, request_id or "", server, json.dumps(list(outputs))]
        found = await self._generate(keys, [*args, "1" if dup else "0"])
        if not isinstance(found, list) or int(found[0]) != 1:
            return (int(found[0]) if isinstance(found, list) else int(found)), 0, 0.0, False
        return 1, int(found[1]), float(found[2]), found[3] == "1"

    async def finish(
        self,
        job_id: str,
        record: Any,
        *,
        claim: Claim | None = None,
        entry: str = "",
        dead: bool = False,
    ) -> int:
        """FINISH with a final :class:`Record`: 1 done, 0 already final, -1 not the owner."""
        parts = ("counts", "fin", "meta", "wstats", "sstats", "ticks", "dead", "stream")
        keys = [self.job_key(job_id), *map(self.key, parts)]
        args = [
            claim.owner if claim else "",
            claim.epoch if claim else "",
            record.status,
            record.to_json(),
            record.worker or "",
            record.server or "",
            int(record.elapsed * 1000),
            "1" if dead else "0",
            "1" if record.possible_duplicate else "0",
            job_id,
            GROUP,
            entry,
        ]
        return int(await self._finish(keys, args))

    async def hand_back(self, claim: Claim, entry: str = "") -> int:
        """HAND_BACK: give the job up (its entry idle at once, for any worker to reclaim)."""
        keys = [self.job_key(claim.job_id), self.key("stream")]
        return int(await self._hand_back(keys, [claim.owner, claim.epoch, GROUP, entry]))

    async def ack(self, entry: str) -> None:
        """Acknowledge and delete a stream entry whose job needs nothing more."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.key("stream"), GROUP, entry)
            pipe.xdel(self.key("stream"), entry)
            await pipe.execute()

    async def heartbeat(
        self, owner: str, held: Sequence[tuple[Claim, str]], in_flight: int
    ) -> list[int]:
        """HEARTBEAT: renew ``held`` (claim, entry) pairs; the indexes (from 0) of lost ones."""
        keys = [self.key("stream"), self.key("beats"), self.key("wstats")]
        keys += [self.job_key(claim.job_id) for claim, _ in held]
        args: list[Any] = [owner, GROUP, self.lease_ms, in_flight]
        args += [entry for _, entry in held] + [claim.epoch for claim, _ in held]
        lost = await self._heartbeat(keys, args)
        return [int(n) - 1 for n in lost]
