"""Run a standalone fake: ``python -m modelslab_async.testing serve --servers 3 --port 8765``.

Keys come from ``MODELSLAB_API_KEYS`` (comma-separated; their count overrides ``--servers``)
or default to ``fake-key-1``..``fake-key-N``. ``--server NAME:SLOTS:SECONDS`` (repeatable) gives
each server its own shape. Only key fingerprints are printed. Tests in another process can read
``GET /_fake/stats`` and take a server down or up with ``POST /_fake/servers/NAME``
``{"down": true}``. Once listening,
the line ``READY <base_url>`` is printed, so a benchmark can start it as a subprocess. Runs
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from modelslab_async._secrets import fingerprint

from ._fake import FakeModelsLab
from ._jobs import FakeServerSpec

KEYS_ENV = "MODELSLAB_API_KEYS"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelslab_async.testing",
        description="A fake ModelsLab enterprise img2img API on a local port.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the fake until interrupted")
    serve.add_argument("--servers", type=int, default=1, help="number of servers (default 1)")
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port, 0 for any (default 8765)")
    serve.add_argument("--slots", type=int, default=2, help="parallel jobs per server")
    serve.add_argument("--service-time", type=float, default=0.5, help="seconds per job")
    serve.add_argument("--service-jitter", type=float, default=0.0, help="relative jitter")
    serve.add_argument(
        "--processing-threshold",
        type=float,
        default=1.0,
        help="jobs finishing later than this are answered 'processing' (default 1.0)",
    )
    serve.add_argument(
        "--server",
        action="append",
        type=_server_spec,
        metavar="NAME:SLOTS:SECONDS",
        help="one server with its own slots and service time (repeat; overrides --servers)",
    )
    serve.add_argument("--api-prefix", default="/api/v1/enterprise", help="API path prefix")
    serve.add_argument("--seed", type=int, default=None, help="random seed")
    return parser


def _server_spec(text: str) -> tuple[str, int, float]:
    name, _, rest = text.partition(":")
    slots, _, seconds = rest.partition(":")
    try:
        parsed = (name, int(slots), float(seconds))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME:SLOTS:SECONDS, got {text!r}") from None
    if not name or parsed[1] < 1 or parsed[2] < 0:
        raise argparse.ArgumentTypeError(f"expected NAME:SLOTS:SECONDS, got {text!r}")
    return parsed


def _keys(servers: int) -> list[str]:
    configured = [key.strip() for key in os.environ.get(KEYS_ENV, "").split(",") if key.strip()]
    return configured or [f"fake-key-{n}" for n in range(1, servers + 1)]


def _specs(args: argparse.Namespace) -> list[FakeServerSpec]:
    if args.server:
        shapes: list[tuple[str, int, float]] = args.server
        keys = _keys(len(shapes))
        if len(keys) != len(shapes):
            raise ValueError(f"{KEYS_ENV} lists {len(keys)} keys for {len(shapes)} servers")
    else:
        keys = _keys(args.servers)
        shapes = [(f"server-{n}", args.slots, args.service_time) for n in range(1, len(keys) + 1)]
    return [
        FakeServerSpec(
            name, key, slots=slots, service_time=seconds, service_jitter=args.service_jitter
        )
        for (name, slots, seconds), key in zip(shapes, keys, strict=True)
    ]


async def _serve(args: argparse.Namespace) -> None:
    specs = _specs(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    fake = FakeModelsLab(
        specs,
        processing_threshold=args.processing_threshold,
        host=args.host,
        port=args.port,
        api_prefix=args.api_prefix,
        seed=args.seed,
    )
    async with fake:
        print(f"Fake ModelsLab enterprise API at {fake.base_url}")
        for spec in specs:
            print(
                f"  {spec.name}: slots={spec.slots} service_time={spec.service_time}s "
                f"key={fingerprint(spec.key)}"
            )
        print(f"The first key ({fingerprint(specs[0].key)}) is the load balancer's.")
        print(
            f"Control: GET {fake.root_url}/_fake/stats, "
            f'POST {fake.root_url}/_fake/servers/NAME {{"down": true|false}}'
        )
        print(f"READY {fake.base_url}", flush=True)
        await stop.wait()
    print("Stopped.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments, without the program name; None reads ``sys.argv``.

    Returns:
        The exit status.
    """
    args = _parser().parse_args(argv)
    if args.servers < 1:
        print("--servers must be at least 1", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
