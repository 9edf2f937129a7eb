"""The ``enqueue``, ``worker``, ``results`` and ``status`` commands: a batch over many machines."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .. import InvalidRequestError
from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ._fetch import download_policy
from ._interrupt import run_interruptibly
from ._settings import Settings
from ._shared import open_batch, redis_errors, shared_backend
from ._table import Table, render_tables

if TYPE_CHECKING:
    from ..redis import Batch, BatchStatus

__all__ = ["execute_enqueue", "execute_results", "execute_status", "execute_worker"]

_PROGRESS_EVERY = 5.0


async def execute_enqueue(
    redis_url: str | None, name: str, manifest: Path, *, out: TextIO, **options: Any
) -> int:
    """Add a manifest's jobs to a batch; one JSON line on ``out``."""
    from ..redis import enqueue  # noqa: PLC0415

    async with open_batch(redis_url, name) as batch, redis_errors():
        report = await enqueue(batch, manifest, **options)
    line = {
        "batch": name,
        "added": report.added,
        "present": report.present,
        "bad_lines": report.bad_lines,
        "total": report.total,
    }
    _emit(out, line)
    return EXIT_OK


async def execute_worker(settings: Settings, args: Any, *, out: TextIO, err: TextIO) -> int:
    """Run a batch's jobs until all are final (exit 0) or Ctrl-C (130, jobs handed back)."""
    from ..redis import LedgerTransport, Worker  # noqa: PLC0415

    reclaim = args.reclaim_after
    policy = await download_policy(
        settings.base_url,
        allow_private=args.allow_private_downloads,
        max_bytes=args.max_image_bytes,
    )
    async with (
        open_batch(settings.redis_url, args.batch, reclaim_after=reclaim) as batch,
        shared_backend(settings.redis_url, lease_ttl=reclaim) as backend,
        settings.client(backend=backend, transport=LedgerTransport()) as client,
        redis_errors(),
    ):
        worker = Worker(
            batch,
            client,
            images=args.images,
            concurrency=args.concurrency,
            fetch=policy,
            job_timeout=args.job_timeout,
            download_concurrency=args.download_concurrency,
        )
        _note(err, f"worker {worker.name} on batch {batch.name}: {worker.concurrency} at once")

        async def work() -> None:
            async with asyncio.TaskGroup() as group:
                ticker = group.create_task(_progress(batch, worker.report, err))
                try:
                    await worker.run()
                finally:
                    ticker.cancel()

        _, interrupted = await run_interruptibly(work())
    report = worker.report
    code = EXIT_INTERRUPTED if interrupted else EXIT_OK
    _note(
        err,
        f"worker {report.name}: {report.succeeded} succeeded, {report.failed} failed, "
        f"{report.handed_back} handed back; took over {report.taken_over} "
        f"({report.collected} collected, {report.resubmitted} submitted again)"
        + ("" if interrupted else "; every job of the batch is final"),
    )
    line = {
        "batch": args.batch,
        "worker": report.name,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "handed_back": report.handed_back,
        "taken_over": report.taken_over,
        "collected": report.collected,
        "resubmitted": report.resubmitted,
        "exit_code": code,
    }
    _emit(out, line)
    return code


async def _progress(batch: Batch, report: Any, err: TextIO) -> None:
    from ..redis import status  # noqa: PLC0415

    while True:
        await asyncio.sleep(_PROGRESS_EVERY)
        try:
            now = await status(batch)
        except Exception as error:  # noqa: BLE001 - progress is best effort
            _note(err, f"status unavailable: {type(error).__name__}")
            continue
        _note(
            err,
            f"batch {now.final}/{now.total} final, {now.rate:.1f} jobs/s, ETA "
            f"{_duration(now.eta)}; this worker {report.succeeded} ok, {report.failed} failed",
        )


async def execute_results(
    redis_url: str | None, name: str, path: Path, *, as_finished: bool, out: TextIO
) -> int:
    """Write each final record to ``path``; exit 0 only when every job succeeded."""
    from ..redis import results  # noqa: PLC0415

    counts = {"succeeded": 0, "failed": 0, "pending": 0, "expired": 0}
    async with open_batch(redis_url, name) as batch, redis_errors():
        total = (await batch.counts())["total"]
        if total == 0:
            raise InvalidRequestError("--batch", f"no batch {name!r} in this Redis")
        stream = await asyncio.to_thread(path.open, "w", encoding="utf-8", newline="\n")
        try:
            async for record in results(batch, as_finished=as_finished):
                state = record["status"]
                if state in ("succeeded", "failed"):
                    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                    counts[state] += 1
                else:
                    counts["expired" if state == "expired" else "pending"] += 1
        finally:
            stream.close()
    if as_finished:
        counts["pending"] = total - counts["succeeded"] - counts["failed"]
    code = EXIT_OK if counts["succeeded"] == total else EXIT_FAILED
    _emit(out, {"batch": name, "results": str(path), "total": total, **counts, "exit_code": code})
    return code


async def execute_status(
    redis_url: str | None, name: str, *, watch: bool, interval: float, as_json: bool, out: TextIO
) -> int:
    """Show the batch once, or (``watch``) until every job is final or Ctrl-C."""
    from ..redis import status  # noqa: PLC0415

    async with open_batch(redis_url, name) as batch, redis_errors():

        async def show() -> None:
            while True:
                now = await status(batch)
                if as_json:
                    _emit(out, now.as_json())
                else:
                    render_tables(_tables(now), out, fancy=False)
                if not watch or now.complete:
                    return
                await asyncio.sleep(interval)

        _, interrupted = await run_interruptibly(show())
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _tables(now: BatchStatus) -> list[Table]:
    states = [(state, str(count)) for state, count in now.states.items()]
    states += [
        ("possible duplicates", str(now.duplicates)),
        ("dead-lettered", str(now.dead)),
        ("rate", f"{now.rate:.2f} jobs/s (last minute)"),
        ("ETA", _duration(now.eta)),
    ]
    done = "complete" if now.complete else "enqueuing" if not now.sealed else "running"
    title = f"batch {now.name}: {now.final}/{now.total} final ({done})"
    workers = [
        (
            w.name,
            w.host or "-",
            "alive" if w.alive else "gone",
            "-" if w.last_beat is None else f"{w.last_beat:.0f}s ago",
            str(w.in_flight),
            str(w.succeeded),
            str(w.failed),
            w.images or "-",
        )
        for w in now.workers
    ]
    servers = [
        (
            s.name,
            str(s.succeeded),
            str(s.failed),
            "-" if s.mean_elapsed is None else f"{s.mean_elapsed:.2f}s",
        )
        for s in now.servers
    ]
    return [
        Table(title=title, headers=("", ""), rows=states),
        Table(
            title="workers",
            headers=("worker", "host", "state", "beat", "in flight", "ok", "failed", "images"),
            rows=workers,
        ),
        Table(title="servers", headers=("server", "ok", "failed", "mean time"), rows=servers),
    ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _note(err: TextIO, text: str) -> None:
    err.write(f"{time.strftime('%H:%M:%S')} {text}\n")
    err.flush()


def _emit(out: TextIO, line: dict[str, Any]) -> None:
    out.write(json.dumps(line) + "\n")
    out.flush()
