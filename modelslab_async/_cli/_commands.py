"""The ``batch`` and ``servers`` commands, over the shared settings."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TextIO

import attrs

from .. import Client, ModelsLabError, SharedState, SystemDetails
from ._batch import BatchRun
from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ._fetch import download_policy
from ._inputs import BatchOptions, prepare
from ._interrupt import run_interruptibly
from ._report import make_reporter
from ._settings import Settings
from ._shared import shared_backend
from ._summary import BatchStats
from ._table import Table, render_tables

__all__ = ["execute_batch", "show_servers"]


async def execute_batch(
    settings: Settings,
    options: BatchOptions,
    *,
    out: TextIO,
    err: TextIO,
    interactive: bool | None = None,
) -> int:
    """
    Run a manifest to the end (or until SIGINT), then print the summary: tables to ``err``,
    one JSON line to ``out``. Returns the exit status.

    Raises:
        InvalidRequestError: The manifest, results file or images directory is unusable;
            nothing was sent.
    """
    fancy = err.isatty() if interactive is None else interactive
    prepared = await asyncio.to_thread(prepare, options)
    stats = BatchStats(total=prepared.total)
    reporter = make_reporter(err, interactive=fancy)
    interrupted = False
    try:
        fetch = await download_policy(
            settings.base_url,
            allow_private=options.allow_private_downloads,
            max_bytes=options.max_image_bytes,
        )
        async with (
            shared_backend(settings.redis_url) as backend,
            settings.client(backend=backend) as client,
        ):
            run = BatchRun(client, prepared, stats, reporter, fetch=fetch)
            reporter.start(stats)
            try:
                _, interrupted = await run_interruptibly(run.run())
            finally:
                reporter.stop()
    finally:
        prepared.close()
    stats.interrupted = interrupted
    code = EXIT_INTERRUPTED if interrupted else EXIT_FAILED if stats.all_failed else EXIT_OK
    render_tables(stats.tables(), err, fancy=fancy)
    summary = {"results": str(options.results), **stats.as_json(), "exit_code": code}
    out.write(json.dumps(summary) + "\n")
    out.flush()
    return code


async def show_servers(settings: Settings, *, out: TextIO, as_json: bool, fancy: bool) -> int:
    """Ask every server for its ``system_details`` and show them with the pool's view of it."""
    async with (
        shared_backend(settings.redis_url) as backend,
        settings.client(backend=backend) as client,
    ):
        names = [server.name for server in client.pool.servers]
        answers = await asyncio.gather(*(_details(client, name) for name in names))
        routes = [client.pool.route_name(name) for name in names]
        snapshots = {shot.name: shot for shot in client.pool.snapshot()}
        shared = await client.pool.shared_states()
    rows: list[dict[str, Any]] = []
    for server, route, answer in zip(client.pool.servers, routes, answers, strict=True):
        shot = snapshots[route]
        row: dict[str, Any] = {
            "name": server.name,
            "key": shot.fingerprint,
            "capacity": server.max_concurrency,
            "route": route,
            "health": shot.state,
        }
        if isinstance(answer, SystemDetails):
            row |= {
                "status": answer.status,
                "queue_time": answer.queue_time,
                "model_count": answer.model_count,
                "error": None,
            }
        else:
            row |= {"status": "unreachable", "queue_time": None, "model_count": None}
            row["error"] = f"{type(answer).__name__}: {answer.message}"
        rows.append(row)
    if as_json:
        for row in rows:
            out.write(json.dumps(row) + "\n")
        for state in shared:
            out.write(json.dumps({"shared": attrs.asdict(state)}) + "\n")
        out.flush()
    else:
        headers = ("server", "key", "capacity", "status", "queue time", "models", "health", "error")
        cells = [
            (
                row["name"],
                row["key"],
                str(row["capacity"]),
                row["status"],
                "-" if row["queue_time"] is None else f"{row['queue_time']:g}s",
                "-" if row["model_count"] is None else str(row["model_count"]),
                row["health"],
                _short(row["error"] or ""),
            )
            for row in rows
        ]
        title = f"{len(rows)} servers at {client.base_url} (routing: {client.pool.routing})"
        tables = [Table(title=title, headers=headers, rows=cells)]
        if shared:
            tables.append(_shared_table(shared))
        render_tables(tables, out, fancy=fancy)
    healthy = all(
        row["error"] is None and row["status"].lower() in ("ok", "success") for row in rows
    )
    return EXIT_OK if healthy else EXIT_FAILED


def _shared_table(shared: list[SharedState]) -> Table:
    """What every process sharing the pool sees in Redis: holders, cooldowns, breakers."""
    rows = [
        (
            state.server,
            str(state.holders),
            f"{state.cooldown_left:.1f}s" if state.cooldown_left > 0 else "-",
            state.breaker,
            str(state.failures),
        )
        for state in shared
    ]
    headers = ("route", "holders", "cooldown", "breaker", "failures")
    return Table(title="shared state (Redis, all processes)", headers=headers, rows=rows)


async def _details(client: Client, name: str) -> SystemDetails | ModelsLabError:
    try:
        return await client.system_details(name)
    except ModelsLabError as error:
        return error


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
