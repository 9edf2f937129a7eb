"""The command line's grammar: commands, options, help and the exit statuses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from .. import Routing
from ._args_redis import add_redis_commands, add_redis_option
from ._inputs import MAX_IMAGE_BYTES
from ._local import MAX_INIT_IMAGE_BYTES
from ._settings import BASE_URL_ENV, KEYS_ENV, REDIS_URL_ENV

__all__ = ["build_parser"]

_DESCRIPTION = """\
Run img2img jobs on a pool of ModelsLab enterprise servers.

Start with `modelslab-async demo`: it runs a batch against an embedded fake pool.
"""

_EPILOG = f"""\
keys:
  {KEYS_ENV}   comma-separated API keys, the first server first (named
                       server-1, server-2...), or --config FILE (TOML):
                         base_url = "https://modelslab.com/api/v1/enterprise"
                         routing = "least-busy"
                         [[servers]]
                         name = "gpu-a"
                         key_env = "GPU_A_KEY"   # or key = "..." (chmod 600)
                         max_concurrency = 4
  {BASE_URL_ENV}   the API base URL, unless --base-url or the config gives one.
  {REDIS_URL_ENV}  Redis, unless --redis or the config's redis_url gives it.
  Keys are never taken from the command line and never printed.

exit status:
  0    every job succeeded (servers: every server answered ok)
  1    some jobs failed: API errors, bad manifest lines, failed downloads
  2    bad input, usage or configuration (no keys, unreadable manifest): nothing ran
  130  interrupted (SIGINT/SIGTERM); run the same batch again to resume it
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not > 0")
    return value


def _byte_count(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    number, unit = text.strip(), 1
    if number[-1:].lower() in units:
        number, unit = number[:-1], units[number[-1].lower()]
    if not number.isascii() or not number.isdigit() or len(number) > 15:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a byte count (e.g. 50M)")
    value = int(number) * unit
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _downloads() -> argparse.ArgumentParser:
    downloads = argparse.ArgumentParser(add_help=False)
    group = downloads.add_argument_group("downloads")
    group.add_argument(
        "--max-image-bytes",
        type=_byte_count,
        default=MAX_IMAGE_BYTES,
        metavar="N",
        help="refuse an output image larger than N bytes (K/M/G suffixes; default 50M)",
    )
    group.add_argument(
        "--allow-private-downloads",
        action="store_true",
        help="download images from loopback, private and link-local addresses too "
        "(allowed anyway when the API itself is on such an address)",
    )
    return downloads


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML file naming servers, keys and capacities"
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        help=f"API base URL (default: config, ${BASE_URL_ENV}, or ModelsLab's)",
    )
    group.add_argument(
        "--routing",
        choices=get_args(Routing),
        help="how jobs are spread over the servers (default: config, or first-server)",
    )
    add_redis_option(group)
    group.add_argument(
        "-v", "--verbose", action="store_true", help="log retries and library details"
    )
    return common


def add_worker_options(worker: argparse.ArgumentParser) -> None:
    """The ``worker`` command's options shared with ``batch``."""
    worker.add_argument(
        "--download-concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="most images downloading at once (default 8)",
    )
    worker.add_argument(
        "--job-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="deadline of each job (default 900)",
    )
    worker.add_argument(
        "--reclaim-after",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="take over the jobs of a worker silent this long, and give its slots back "
        "(default 30; every worker of a batch should use the same)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``modelslab-async`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="modelslab-async",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common()
    downloads = _downloads()
    raw = argparse.RawDescriptionHelpFormatter

    batch = commands.add_parser(
        "batch",
        parents=[common, downloads],
        help="run a JSONL manifest of jobs, resumably",
        description=(
            "Run every job of a manifest, journaling each one in the results file as it goes.\n"
            "Run the same command again to resume after a crash or Ctrl-C: finished jobs are\n"
            "skipped, jobs a server accepted are collected by polling, not submitted again."
        ),
        epilog=_EPILOG,
        formatter_class=raw,
    )
    batch.add_argument(
        "manifest",
        type=Path,
        metavar="MANIFEST",
        help="JSONL: one request per line, API field names, optional id",
    )
    batch.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="RESULTS",
        help="results JSONL, appended as jobs finish (the resume journal)",
    )
    batch.add_argument(
        "--images", type=Path, metavar="DIR", help="download the output images into DIR"
    )
    batch.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="most jobs in flight (default: the pool's capacity)",
    )
    batch.add_argument(
        "--download-concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="most images downloading at once (default 8)",
    )
    batch.add_argument(
        "--job-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="deadline of each job (default 900)",
    )
    batch.add_argument(
        "--allow-outside-files",
        action="store_true",
        help="let init_image name files outside the manifest's folder",
    )
    batch.add_argument(
        "--max-init-image-bytes",
        type=_byte_count,
        default=MAX_INIT_IMAGE_BYTES,
        metavar="N",
        help="refuse a local init_image larger than N bytes (default 20M)",
    )
    batch.add_argument(
        "--progress",
        choices=("auto", "bar", "plain"),
        default="auto",
        help="progress bar (needs rich) or plain log lines (default: bar on a terminal)",
    )

    single = commands.add_parser(
        "img2img",
        parents=[common, downloads],
        help="run one job",
        description="Run one img2img job; its result is printed as JSON on stdout.",
        epilog=_EPILOG,
        formatter_class=raw,
    )
    single.add_argument("--model-id", required=True, help="the model to use")
    single.add_argument("--prompt", required=True, help="what to make of the image")
    single.add_argument(
        "--init-image", required=True, metavar="URL_OR_PATH", help="the image to start from"
    )
    single.add_argument("--negative-prompt", help="what to avoid")
    single.add_argument("--strength", type=float, help="how much to change the image, 0-1")
    single.add_argument("--width", type=int, help="output width (multiple of 8, up to 1024)")
    single.add_argument("--height", type=int, help="output height (multiple of 8, up to 1024)")
    single.add_argument("--samples", type=int, help="images to make, 1-4")
    single.add_argument("--steps", type=int, help="inference steps: 21, 31 or 41")
    single.add_argument("--seed", type=int, help="random seed")
    single.add_argument("--guidance-scale", type=float, help="prompt guidance, 1-20")
    single.add_argument("--scheduler", help="scheduler name, e.g. UniPCMultistepScheduler")
    single.add_argument("--out", type=Path, metavar="DIR", help="download the images into DIR")
    single.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="deadline of the job (default 900)",
    )

    servers = commands.add_parser(
        "servers",
        parents=[common],
        help="show each server's system_details and health",
        epilog=_EPILOG,
        formatter_class=raw,
    )
    servers.add_argument("--json", action="store_true", help="one JSON object per server")

    add_redis_commands(commands, common, downloads, epilog=_EPILOG, positive=_positive_int)
    add_worker_options(commands.choices["worker"])

    demo = commands.add_parser(
        "demo",
        help="run a batch against an embedded fake pool (no keys needed)",
        description="Start three fake enterprise servers (one slow, one flaky), write a "
        "manifest, run it with images downloaded, and print where the results are.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="where to write (default: $MODELSLAB_DEMO_DIR or ./modelslab-demo)",
    )
    demo.add_argument(
        "--jobs",
        type=_positive_int,
        default=30,
        metavar="N",
        help="jobs in the manifest (default 30)",
    )
    demo.add_argument(
        "--progress", choices=("auto", "bar", "plain"), default="auto", help="as for batch"
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="log library details")
    return parser
