"""
Figure 1 in instructions: the client's machine instructions per job, counted by valgrind.

CPU time on a shared 2-core virtual machine moves by 10-15% from run to run (the fake runs in
the other process, on the same cores). Instructions retired do not: this counts them with
``valgrind --tool=callgrind`` for the client process only (the fake, a child process, runs
natively), for the contenders of ``bench_overhead.py``, the same setup. Each contender runs
twice, with ``SMALL`` and ``LARGE`` jobs after the same warm-up; the difference divided by
``LARGE - SMALL`` is the instructions per job, free of start-up and import costs. Hash
randomisation is fixed so that two runs count alike.

Instructions are not time (a cache miss costs more than an add), so this complements the CPU
figure rather than replacing it: it says how much work the client does per job, exactly.

Needs valgrind (``apt-get install valgrind``). Run: ``python benchmarks/bench_instructions.py``
(about 7 minutes; ``--quick`` for fewer jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _fakeproc import FakeProcess, ServerSpec, table, write_result
from bench_overhead import (
    CONCURRENCY,
    SERVERS,
    WARMUP,
    Contender,
    Ours,
    OurTransportOnly,
    RawAiohttp,
)

SMALL, LARGE = 500, 1500
CONTENDERS = {
    "raw aiohttp": RawAiohttp,
    "modelslab-async (first-server)": lambda: Ours("first-server"),
    "modelslab-async (least-busy)": lambda: Ours("least-busy"),
    "diagnostic: raw loop over our AiohttpTransport": OurTransportOnly,
}
TARGET_RATIO = 1.25


async def child(name: str, jobs: int) -> None:
    """One contender, warm-up then ``jobs`` jobs (run under valgrind by the parent)."""
    servers = [ServerSpec(f"server-{n}", 64, 0.0) for n in range(1, SERVERS + 1)]
    with FakeProcess(servers) as fake:
        contender: Contender = CONTENDERS[name]()  # type: ignore[operator]
        await contender.open(fake, CONCURRENCY)
        await contender.batch(WARMUP)
        ok = await contender.batch(jobs)
        await contender.close()
    if ok != jobs:
        raise SystemExit(f"{name}: {ok}/{jobs} jobs succeeded")


def count(name: str, jobs: int) -> int:
    """Instructions the client process executed for ``name`` with ``jobs`` jobs."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        str(jobs),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{name}: valgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer jobs (a smoke run)")
    parser.add_argument("--child", nargs=2, metavar=("CONTENDER", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if args.child:
        asyncio.run(child(args.child[0], int(args.child[1])))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    small, large = (100, 300) if args.quick else (SMALL, LARGE)
    # Two at a time: valgrind is single-threaded, and counts do not depend on the load.
    runs = [(name, jobs) for name in CONTENDERS for jobs in (small, large)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(zip(runs, pool.map(lambda run: count(*run), runs), strict=True))
    per_job = {
        name: (counts[name, large] - counts[name, small]) / (large - small) for name in CONTENDERS
    }
    floor = per_job["raw aiohttp"]
    rows = [[name, f"{value:,.0f}", f"{value / floor:.2f}x"] for name, value in per_job.items()]
    print(
        f"\nClient instructions per job (valgrind, {large} minus {small} jobs, concurrency "
        f"{CONCURRENCY}, {SERVERS} fake servers in another process)\n"
    )
    print(table(["contender", "instructions/job", "vs raw"], rows))
    ours = per_job["modelslab-async (first-server)"] / floor
    print(f"\nOur instructions per job vs raw: {ours:.2f}x (CPU target: {TARGET_RATIO}x)")
    path = write_result(
        "instructions",
        {
            "small": small,
            "large": large,
            "concurrency": CONCURRENCY,
            "servers": SERVERS,
            "instructions_per_job": per_job,
            "ratio_to_raw": {name: value / floor for name, value in per_job.items()},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
