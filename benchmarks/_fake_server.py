"""
A standalone `FakeModelsLab` for the benchmarks, run as a child process by `_fakeproc.py`.

Why not ``python -m modelslab_async.testing serve``: that command gives every server the same
slots and service time, and offers no way to take a server down from outside. This runner
builds the fake from a JSON list of per-server specs and takes commands on stdin, one JSON
object a line, answering each on stdout with ``REPLY <json>``:

    {"cmd": "down", "name": "server-2", "value": true}   take a server down (or up)
    {"cmd": "stats"}                                      per-server counters + own CPU time
    {"cmd": "records"}                                    what was received (no keys)
    {"cmd": "clear"}                                      forget the records

Keys come from ``MODELSLAB_API_KEYS`` (comma-separated, one per server) and are never printed.
When stdin closes (the parent died or is done), the fake stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import attrs

from modelslab_async.testing import FakeModelsLab, FakeServerSpec


def _specs(config: list[dict[str, Any]]) -> list[FakeServerSpec]:
    keys = [k.strip() for k in os.environ.get("MODELSLAB_API_KEYS", "").split(",") if k.strip()]
    if len(keys) != len(config):
        raise SystemExit(f"need {len(config)} keys in MODELSLAB_API_KEYS, got {len(keys)}")
    return [
        FakeServerSpec(
            item["name"],
            key,
            slots=int(item["slots"]),
            service_time=float(item["service_time"]),
        )
        for item, key in zip(config, keys, strict=True)
    ]


def _answer(fake: FakeModelsLab, command: dict[str, Any]) -> dict[str, Any]:
    cmd = command.get("cmd")
    if cmd == "down":
        fake.set_down(str(command["name"]), bool(command.get("value", True)))
        return {"ok": True, "t": time.monotonic()}
    if cmd == "stats":
        return {
            "t": time.monotonic(),
            "cpu": time.process_time(),
            "servers": [attrs.asdict(s) for s in fake.stats()],
        }
    if cmd == "records":
        return {
            "records": [
                {
                    "at": r.at,
                    "endpoint": r.endpoint,
                    "server": r.server,
                    "status": r.status,
                    "request_id": r.request_id,
                }
                for r in fake.received
            ]
        }
    if cmd == "clear":
        fake.clear_received()
        return {"ok": True}
    return {"error": f"unknown command {cmd!r}"}


async def _serve(args: argparse.Namespace) -> None:
    config = json.loads(args.config)
    fake = FakeModelsLab(
        _specs(config),
        processing_threshold=args.processing_threshold,
        port=0,
        max_records=args.max_records,
        seed=args.seed,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with fake:
        print(f"READY {fake.base_url}", flush=True)
        while line := await reader.readline():
            try:
                reply = _answer(fake, json.loads(line))
            except Exception as error:
                reply = {"error": f"{type(error).__name__}: {error}"}
            sys.stdout.write("REPLY " + json.dumps(reply) + "\n")
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="JSON list of {name, slots, service_time}")
    parser.add_argument("--processing-threshold", type=float, default=1.0)
    parser.add_argument("--max-records", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
