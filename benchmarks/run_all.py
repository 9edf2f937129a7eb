"""
Run every benchmark one after the other, then regenerate the plots.

Run: ``python benchmarks/run_all.py`` (``--quick`` passes ``--quick`` to each: a smoke run).
Each benchmark prints its table and writes ``benchmarks/results/<name>.json``; the output of
the whole run is saved to ``benchmarks/results/run_all.log``, the README's tables (from
`report.py`) to ``benchmarks/results/report.md``, and the plots next to the README.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _fakeproc import HERE, RESULTS

BENCHMARKS = (
    "bench_overhead.py",
    "bench_overhead_breakdown.py",
    "bench_makespan.py",
    "bench_queued.py",
    "bench_memory.py",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    log = []
    for script in (*BENCHMARKS, "plots.py", "report.py"):
        command = [sys.executable, str(HERE / script)]
        if args.quick and script in BENCHMARKS:
            command.append("--quick")
        print(f"\n=== {script} ===", flush=True)
        started = time.monotonic()
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        print(done.stdout, end="", flush=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            raise SystemExit(f"{script} failed with exit status {done.returncode}")
        log.append(f"=== {script} ({time.monotonic() - started:.0f} s) ===\n{done.stdout}")
        if script == "report.py":
            (RESULTS / "report.md").write_text(done.stdout)
    (RESULTS / "run_all.log").write_text("\n".join(log))


if __name__ == "__main__":
    main()
