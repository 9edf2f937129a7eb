"""Run a standalone fake: ``python -m modelslab_async.testing serve --servers 3 --port 8765``.

Keys come from ``MODELSLAB_API_KEYS`` (comma-separated; their count overrides ``--servers``)
or default to ``fake-key-1``..``fake-key-N``. ``--server NAME:SLOTS:SECONDS`` (repeatable) gives
each server its own shape. Only key fingerprints are printed.

Documented failures on demand: ``--fault KIND[@SERVER][=RATE][,NAME=VALUE...]`` (repeatable,
e.g. ``--fault rate_limit=0.1 --fault server_error@server-2=0.05,status=503``),
``--queue-limit N``, ``--balance N`` (images the account can still pay for),
``--unreachable HOST_OR_URL_PREFIX`` and ``--models a,b,c``. Jobs submitted with a loopback
``webhook`` URL are called back; ``--webhook-drop P``, ``--webhook-duplicate P`` and
``--webhook-delay SECONDS`` make the callbacks as unreliable as the real ones.
``--variants SEED`` draws each answer among the documented response shapes. Tests in another
process drive it through ``/_fake/...`` (see ``_control.py``). Once listening, the line
``READY <base_url>`` is printed, so a test or a benchmark can start it as a subprocess. Runs
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
from collections.abc import Sequence

from modelslab_async._secrets import fingerprint

from ._fake import FakeModelsLab
from ._faults import Fault
from ._faultspec import fault_from_text
from ._jobs import DEFAULT_MODELS, FakeServerSpec

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
    _add_contract_options(serve)
    _add_webhook_options(serve)
    return parser


def _add_webhook_options(serve: argparse.ArgumentParser) -> None:
    rates = (
        ("--webhook-drop", "probability that a job's webhook callback is not sent (default 0)"),
        ("--webhook-duplicate", "probability that a webhook callback is sent twice (default 0)"),
    )
    for flag, text in rates:
        serve.add_argument(flag, type=_probability, default=0.0, metavar="P", help=text)
    serve.add_argument(
        "--webhook-delay",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="seconds between a job's end and its webhook callback (default 0)",
    )


def _add_contract_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_fault,
        metavar="KIND[@SERVER][=RATE][,NAME=VALUE...]",
        help=(
            "inject a fault at RATE (probability, default 1) for every request, or those of "
            "SERVER ('balancer' for first-key requests); KIND is one of rate_limit, "
            "server_error, drop, slow, malformed, error_200, busy, fail; NAME is one of "
            "endpoint, count, retry_after, status, delay, message, after_accept (repeat)"
        ),
    )
    serve.add_argument(
        "--queue-limit",
        type=_non_negative,
        default=None,
        metavar="N",
        help="jobs that may wait for a slot per server; beyond: 429 with retry_after",
    )
    serve.add_argument(
        "--variants",
        type=int,
        default=None,
        metavar="SEED",
        help="draw each answer among the documented response shapes, reproducibly",
    )
    serve.add_argument(
        "--balance",
        type=_non_negative,
        default=None,
        metavar="N",
        help="images the account can pay for; then 402 'Insufficient credits'",
    )
    serve.add_argument(
        "--unreachable",
        action="append",
        default=[],
        metavar="HOST_OR_URL_PREFIX",
        help="init images there 'cannot be fetched' (hosts under .invalid never can; repeat)",
    )
    serve.add_argument(
        "--models",
        type=_models,
        default=DEFAULT_MODELS,
        metavar="ID,ID,...",
        help=f"model ids every server has loaded (default {','.join(DEFAULT_MODELS)})",
    )


def _fault(text: str) -> Fault:
    try:
        return fault_from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad fault {text!r}: {exc}") from None


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _models(text: str) -> tuple[str, ...]:
    models = tuple(model.strip() for model in text.split(",") if model.strip())
    if not models:
        raise argparse.ArgumentTypeError("expected model ids separated by commas")
    return models


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
            name,
            key,
            slots=slots,
            service_time=seconds,
            service_jitter=args.service_jitter,
            models=args.models,
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
        queue_limit=args.queue_limit,
        variants=args.variants,
        balance=args.balance,
        unreachable=args.unreachable,
        webhook_drop=args.webhook_drop,
        webhook_duplicate=args.webhook_duplicate,
        webhook_delay=args.webhook_delay,
    )
    for fault in args.fault:
        fake.add_fault(fault)
    async with fake:
        print(f"Fake ModelsLab enterprise API at {fake.base_url}")
        for spec in specs:
            print(
                f"  {spec.name}: slots={spec.slots} service_time={spec.service_time}s "
                f"key={fingerprint(spec.key)}"
            )
        print(f"The first key ({fingerprint(specs[0].key)}) is the load balancer's.")
        print(f"Models: {', '.join(args.models)}")
        _print_options(args)
        print(
            f"Control: GET {fake.root_url}/_fake/stats, "
            f'POST {fake.root_url}/_fake/servers/NAME {{"down": true|false}}, '
            f"GET|POST|DELETE {fake.root_url}/_fake/faults, GET {fake.root_url}/_fake/records"
        )
        print(f"READY {fake.base_url}", flush=True)
        await stop.wait()
    print("Stopped.", flush=True)


def _print_options(args: argparse.Namespace) -> None:
    for fault in args.fault:
        where = f" on {fault.route}" if fault.route else ""
        print(f"Fault: {fault.kind}{where} at rate {fault.probability:g} ({fault.endpoint})")
    if args.queue_limit is not None:
        print(f"Queue limit: {args.queue_limit} waiting jobs per server")
    if args.balance is not None:
        print(f"Balance: {args.balance} images")
    if args.unreachable:
        print(f"Unreachable image sources: {', '.join(args.unreachable)}")
    if args.variants is not None:
        print(f"Response variants: seed {args.variants}")
    if args.webhook_drop or args.webhook_duplicate or args.webhook_delay:
        print(
            f"Webhooks: drop {args.webhook_drop:g}, duplicate {args.webhook_duplicate:g}, "
            f"delay {args.webhook_delay:g}s (loopback URLs only)"
        )


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
