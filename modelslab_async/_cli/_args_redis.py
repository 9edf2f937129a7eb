"""The grammar of the commands that run a batch over many machines, through Redis."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._local import MAX_INIT_IMAGE_BYTES
from ._settings import REDIS_URL_ENV

__all__ = ["add_redis_commands", "add_redis_option"]

_MANY = """\
A batch over many machines: `enqueue` adds a manifest's jobs to a named batch in Redis;
any number of `worker`s, on any machines, run them (each job's outcome exactly once: a job
a server accepted is collected, never submitted again); `results` writes one final record
per job; `status` shows the totals, workers, servers, rate and ETA.
"""


def add_redis_option(group: Any) -> None:
    """``--redis URL`` on a group of options."""
    group.add_argument(
        "--redis",
        metavar="URL",
        help=f"Redis shared by every process (default: ${REDIS_URL_ENV}, or the config's "
        "redis_url); the URL is never printed",
    )


def _redis_only() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--config", type=Path, metavar="FILE", help="TOML file (for its redis_url)")
    add_redis_option(group)
    group.add_argument("-v", "--verbose", action="store_true", help="log library details")
    return parent


def add_redis_commands(
    commands: Any,
    common: argparse.ArgumentParser,
    downloads: argparse.ArgumentParser,
    *,
    epilog: str,
    positive: Callable[[str], int],
) -> None:
    """Add ``enqueue``, ``worker``, ``results`` and ``status``."""
    raw = argparse.RawDescriptionHelpFormatter
    redis_only = _redis_only()

    enqueue = commands.add_parser(
        "enqueue",
        parents=[redis_only],
        help="add a manifest's jobs to a batch in Redis (idempotent)",
        description=_MANY + "\nEnqueuing the same manifest again adds nothing; a changed "
        "line of a job already there is an error (exit 2) and adds nothing.",
        epilog=epilog,
        formatter_class=raw,
    )
    enqueue.add_argument("manifest", type=Path, metavar="MANIFEST", help="JSONL, as for batch")
    _batch_name(enqueue)
    enqueue.add_argument(
        "--allow-outside-files",
        action="store_true",
        help="let init_image name files outside the manifest's folder",
    )
    enqueue.add_argument(
        "--max-init-image-bytes",
        type=int,
        default=MAX_INIT_IMAGE_BYTES,
        metavar="N",
        help="refuse a local init_image larger than N bytes (default 20M)",
    )
    enqueue.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="drop each finished job's record from Redis this long after it ends",
    )

    worker = commands.add_parser(
        "worker",
        parents=[common, downloads],
        help="run a batch's jobs (any number of workers, on any machines)",
        description=_MANY + "\nExits 0 once every job of the batch is final, 130 on Ctrl-C "
        "after handing its jobs back.",
        epilog=epilog,
        formatter_class=raw,
    )
    _batch_name(worker)
    worker.add_argument(
        "--images", type=Path, metavar="DIR", help="download the output images into DIR"
    )
    worker.add_argument(
        "--concurrency",
        type=positive,
        metavar="N",
        help="most jobs taken at once by this worker, waiting for a slot included "
        "(default: twice the pool's capacity)",
    )

    results = commands.add_parser(
        "results",
        parents=[redis_only],
        help="write one final record per job of a batch",
        description="Write each final job's record (the batch command's format, plus the "
        "worker and host that hold its images), in manifest order.\nExit 0: every job "
        "succeeded; 1: some failed or are not final yet.",
        epilog=epilog,
        formatter_class=raw,
    )
    _batch_name(results)
    results.add_argument("--out", type=Path, required=True, metavar="FILE", help="JSONL")
    results.add_argument(
        "--as-finished", action="store_true", help="in the order the jobs finished"
    )

    status = commands.add_parser(
        "status",
        parents=[redis_only],
        help="show a batch's totals, workers, servers, rate and ETA",
        epilog=epilog,
        formatter_class=raw,
    )
    _batch_name(status)
    status.add_argument("--watch", action="store_true", help="refresh until the batch ends")
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="for --watch (2)"
    )
    status.add_argument("--json", action="store_true", help="one JSON object per refresh")


def _batch_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch", required=True, metavar="NAME", help="the batch (letters, digits, . _ -)"
    )
