"""Reading a batch back: its final records (streamed), and its status (totals, workers, servers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
from attrs import frozen

from ._ledger import FINAL_STATES, STATES, Batch

__all__ = ["BatchStatus", "ServerStatus", "WorkerStatus", "results", "status"]

_CHUNK = 1000
_RATE_WINDOW = 60.0  # seconds of finishes the rate is measured over
_BUCKET = 10.0


async def results(batch: Batch, *, as_finished: bool = False) -> AsyncIterator[dict[str, Any]]:
    """
    Each job's record, read in chunks (memory does not grow with the batch): in manifest
    order, or in the order the jobs finished (``as_finished``: final ones only).

    A final job yields its record as the ``batch`` command writes it (plus ``worker`` and
    ``host``); a job not final yet yields ``{"id": ..., "status": <its state>}``, and one
    whose record expired (the batch's ``ttl``) ``{"id": ..., "status": "expired"}``.

    .. versionadded:: 0.3.0
    """
    source = batch.key("fin" if as_finished else "ids")
    start = 0
    while True:
        keys = await batch.db.lrange(source, start, start + _CHUNK - 1)
        if not keys:
            return
        start += len(keys)
        async with batch.db.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(batch.job_key(key), "s", "r")
            found = await pipe.execute()
        for key, (state, record) in zip(keys, found, strict=True):
            job_id = None if key.startswith("\0") else key
            if record is not None and state in FINAL_STATES:
                yield json.loads(record)
            else:
                yield {"id": job_id, "status": state or "expired"}


@frozen(kw_only=True)
class WorkerStatus:
    """One worker: where it runs, whether it beats, what it did."""

    name: str
    host: str | None
    images: str | None
    alive: bool
    last_beat: float | None  #: seconds since its last heartbeat
    in_flight: int
    succeeded: int
    failed: int


@frozen(kw_only=True)
class ServerStatus:
    """One server (route): jobs that ended there, and their mean time."""

    name: str
    succeeded: int
    failed: int
    mean_elapsed: float | None


@frozen(kw_only=True)
class BatchStatus:
    """
    A batch at one moment.

    Attributes:
        name: The batch.
        total: Jobs enqueued.
        sealed: The whole manifest was enqueued.
        states: Jobs per state (queued, submitting, accepted, generated, succeeded, failed).
        duplicates: Final jobs flagged ``possible_duplicate``.
        dead: Jobs dead-lettered (also counted as failed).
        pending_entries: Stream entries delivered and not finished.
        rate: Jobs finished per second over the last minute.
        eta: Seconds until every job is final at that rate (None when unknown).
        workers: Every worker seen, alive or not.
        servers: Every server a job ended on.
    """

    name: str
    total: int
    sealed: bool
    states: dict[str, int]
    duplicates: int
    dead: int
    pending_entries: int
    rate: float
    eta: float | None
    workers: tuple[WorkerStatus, ...]
    servers: tuple[ServerStatus, ...]

    @property
    def final(self) -> int:
        """Jobs succeeded or failed."""
        return sum(self.states.get(state, 0) for state in FINAL_STATES)

    @property
    def complete(self) -> bool:
        """True when every job of the whole manifest is final."""
        return self.sealed and self.total > 0 and self.final >= self.total

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "batch": self.name,
            "total": self.total,
            "sealed": self.sealed,
            "complete": self.complete,
            "states": self.states,
            "duplicates": self.duplicates,
            "dead": self.dead,
            "pending_entries": self.pending_entries,
            "rate": round(self.rate, 3),
            "eta": None if self.eta is None else round(self.eta, 1),
            "workers": [attrs.asdict(w) for w in self.workers],
            "servers": [attrs.asdict(s) for s in self.servers],
        }


async def status(batch: Batch) -> BatchStatus:
    """
    Totals by state, every worker, every server, the rate over the last minute, the ETA.

    .. versionadded:: 0.3.0
    """
    client = batch.db
    counts = await batch.counts()
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    beats = dict(await client.zrange(batch.key("beats"), 0, -1, withscores=True))
    infos = await client.hgetall(batch.key("workers"))
    wstats = await client.hgetall(batch.key("wstats"))
    sstats = await client.hgetall(batch.key("sstats"))
    ticks = await client.hgetall(batch.key("ticks"))
    groups = await client.xinfo_groups(batch.key("stream")) if counts["total"] else []
    pending = sum(int(g.get("pending", 0)) for g in groups)
    workers = []
    for name in sorted(set(infos) | set(beats)):
        info = json.loads(infos.get(name) or "{}")
        beat = beats.get(name)
        age = None if beat is None else max(0.0, (now_ms - beat) / 1000)
        stopped = info.get("stopped") is not None
        workers.append(
            WorkerStatus(
                name=name,
                host=info.get("host"),
                images=info.get("images"),
                alive=not stopped and age is not None and age < batch.reclaim_after,
                last_beat=age,
                in_flight=int(wstats.get(f"{name}|flight", 0)),
                succeeded=int(wstats.get(f"{name}|succeeded", 0)),
                failed=int(wstats.get(f"{name}|failed", 0)),
            )
        )
    servers = []
    for name in sorted({field.rsplit("|", 1)[0] for field in sstats}):
        ok, failed = int(sstats.get(f"{name}|succeeded", 0)), int(sstats.get(f"{name}|failed", 0))
        total_ms = int(sstats.get(f"{name}|ms", 0))
        mean = total_ms / 1000 / (ok + failed) if ok + failed else None
        servers.append(ServerStatus(name=name, succeeded=ok, failed=failed, mean_elapsed=mean))
    rate = _rate(ticks, now_ms)
    states = {state: counts.get(state, 0) for state in STATES}
    left = counts["total"] - sum(states[s] for s in FINAL_STATES)
    eta = left / rate if rate > 0 else (0.0 if left == 0 and counts["total"] else None)
    return BatchStatus(
        name=batch.name,
        total=counts["total"],
        sealed=bool(counts["sealed"]),
        states=states,
        duplicates=counts.get("duplicates", 0),
        dead=counts.get("dead", 0),
        pending_entries=pending,
        rate=rate,
        eta=eta,
        workers=tuple(workers),
        servers=tuple(servers),
    )


def _rate(ticks: dict[str, str], now_ms: int) -> float:
    """Finishes per second over the last minute, from the ring of 10-second buckets."""
    current = int(now_ms // (_BUCKET * 1000))
    buckets = int(_RATE_WINDOW // _BUCKET)
    done = 0
    for value in ticks.values():
        bucket, _, count = value.partition(":")
        if current - buckets < int(bucket) <= current:
            done += int(count)
    # The current bucket is partly over: count the time it has run.
    span = (buckets - 1) * _BUCKET + (now_ms / 1000 - current * _BUCKET)
    return done / span if span > 0 else 0.0
