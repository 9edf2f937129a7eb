"""Workers as ``status`` shows them: who runs where, writing images where, beating when."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from redis.exceptions import RedisError

from ._ledger import Batch

__all__ = ["register_worker", "remove_stale_parts", "unregister_worker"]

#: A ``.part`` file (a half-written image) older than this was left by a killed worker.
STALE_PART_SECONDS = 3600.0


async def register_worker(
    batch: Batch, name: str, host: str, images: str | None, concurrency: int
) -> None:
    """Say who this worker is (host, pid, images folder) and give its first beat."""
    info = {
        "host": host,
        "pid": os.getpid(),
        "images": images,
        "concurrency": concurrency,
        "started": time.time(),
        "stopped": None,
    }
    await batch.db.hset(batch.key("workers"), name, json.dumps(info))
    await batch.heartbeat(name, [], 0)


async def unregister_worker(batch: Batch, name: str) -> None:
    """Mark the worker stopped (best effort: a dead worker just stops beating)."""
    with contextlib.suppress(RedisError, ValueError, TypeError):
        raw = await batch.db.hget(batch.key("workers"), name)
        info = json.loads(raw) if raw else {}
        info["stopped"] = time.time()
        await batch.db.hset(batch.key("workers"), name, json.dumps(info))
        await batch.db.hset(batch.key("wstats"), f"{name}|flight", 0)


def remove_stale_parts(directory: Path, older_than: float = STALE_PART_SECONDS) -> int:
    """
    Remove half-written images (``.*.part``) older than ``older_than`` seconds; the folder
    may be shared with live workers, whose fresh ``.part`` files are left alone.
    """
    removed, limit = 0, time.time() - older_than
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(".part")):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
    return removed
