"""
The ``modelslab-async`` command line: ``batch``, ``img2img``, ``servers`` and ``demo``; and
``enqueue``, ``worker``, ``results`` and ``status`` for a batch over many machines.

Progress and summaries go to stderr, machine-readable results to stdout. Keys come from
``MODELSLAB_API_KEYS`` or ``--config``, never from an argument, and are never printed. Exit
statuses: 0 success, 1 some jobs failed, 2 bad input (nothing ran), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

from .. import InvalidRequestError, ModelsLabError
from ._args import build_parser
from ._exit import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._inputs import BatchOptions
from ._settings import Settings, load_settings, redis_url_of

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line and return its exit status.

    Args:
        argv: The arguments, without the program name; None reads ``sys.argv``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"modelslab-async {_version()}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with _logging(args.verbose):
        try:
            return _dispatch(args)
        except InvalidRequestError as error:
            print(f"modelslab-async: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except (ModelsLabError, OSError) as error:
            print(f"modelslab-async: error: {type(error).__name__}: {error}", file=sys.stderr)
            return EXIT_FAILED
        except ExceptionGroup as group:  # a failure inside a task group (disk full, say)
            for leaf in _leaves(group):
                print(f"modelslab-async: error: {type(leaf).__name__}: {leaf}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("modelslab-async: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from ._demo import demo_directory, run_demo  # noqa: PLC0415 - loads the fake server

        return asyncio.run(
            run_demo(
                demo_directory(args.dir),
                jobs=args.jobs,
                out=sys.stdout,
                err=sys.stderr,
                interactive=_interactive(args.progress),
            )
        )
    if args.command in ("enqueue", "results", "status"):
        return _dispatch_redis(args)
    timed = args.command in ("batch", "worker")
    timeout = args.job_timeout if timed else getattr(args, "timeout", None)
    settings = _settings(args, timeout)
    if args.command == "worker":
        from ._distributed import execute_worker  # noqa: PLC0415

        return asyncio.run(execute_worker(settings, args, out=sys.stdout, err=sys.stderr))
    if args.command == "batch":
        from ._commands import execute_batch  # noqa: PLC0415 - keeps `--help` fast

        options = BatchOptions(
            manifest=args.manifest,
            results=args.out,
            images=args.images,
            concurrency=args.concurrency,
            download_concurrency=args.download_concurrency,
            verbose=args.verbose,
            allow_private_downloads=args.allow_private_downloads,
            max_image_bytes=args.max_image_bytes,
            allow_outside_files=args.allow_outside_files,
            max_init_image_bytes=args.max_init_image_bytes,
        )
        return asyncio.run(
            execute_batch(
                settings,
                options,
                out=sys.stdout,
                err=sys.stderr,
                interactive=_interactive(args.progress),
            )
        )
    if args.command == "img2img":
        from ._single import request_from_args, run_img2img  # noqa: PLC0415

        request = request_from_args(args)
        return asyncio.run(
            run_img2img(
                settings,
                request,
                out_dir=args.out,
                out=sys.stdout,
                err=sys.stderr,
                allow_private=args.allow_private_downloads,
                max_image_bytes=args.max_image_bytes,
            )
        )
    from ._commands import show_servers  # noqa: PLC0415

    return asyncio.run(
        show_servers(settings, out=sys.stdout, as_json=args.json, fancy=sys.stdout.isatty())
    )


def _dispatch_redis(args: argparse.Namespace) -> int:
    from . import _distributed  # noqa: PLC0415 - keeps `--help` fast

    url = redis_url_of(config=args.config, redis=args.redis)
    if args.command == "enqueue":
        return asyncio.run(
            _distributed.execute_enqueue(
                url,
                args.batch,
                args.manifest,
                out=sys.stdout,
                allow_outside_files=args.allow_outside_files,
                max_init_image_bytes=args.max_init_image_bytes,
                ttl=args.ttl,
            )
        )
    if args.command == "results":
        return asyncio.run(
            _distributed.execute_results(
                url, args.batch, args.out, as_finished=args.as_finished, out=sys.stdout
            )
        )
    return asyncio.run(
        _distributed.execute_status(
            url,
            args.batch,
            watch=args.watch,
            interval=args.interval,
            as_json=args.json,
            out=sys.stdout,
        )
    )


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def _settings(args: argparse.Namespace, job_timeout: float | None) -> Settings:
    return load_settings(
        config=args.config,
        base_url=args.base_url,
        routing=args.routing,
        job_timeout=job_timeout,
        redis=args.redis,
    )


def _interactive(progress: str) -> bool | None:
    return {"auto": None, "bar": True, "plain": False}[progress]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("modelslab-async")
    except PackageNotFoundError:
        return "(not installed)"


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """Library log lines to stderr (servers are named, keys never logged)."""
    logger = logging.getLogger("modelslab_async")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
