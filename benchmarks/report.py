"""
Print the results tables of `benchmarks/README.md` (markdown) from `benchmarks/results/*.json`.

Run: ``python benchmarks/report.py`` after the benchmarks, and paste its output into the README
when the numbers change.
"""

from __future__ import annotations

import json
from typing import Any

from _fakeproc import RESULTS, table


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def overhead(data: dict[str, Any]) -> str:
    raw = data["contenders"]["raw aiohttp"]["cpu_us_per_job"]
    rows = []
    for name, r in data["contenders"].items():
        ratio = r["cpu_us_per_job"] / raw
        runs = ", ".join(f"{x['cpu_us_per_job']:.0f}" for x in r["runs"])
        target = ""
        if name.startswith("modelslab-async"):
            target = f"≤ {data['target_cpu_ratio']}x: {_mark(ratio <= data['target_cpu_ratio'])}"
        rows.append(
            [
                name,
                f"{r['ok_min']}/{data['jobs']}",
                f"**{r['cpu_us_per_job']:.0f}** ({runs})",
                f"{ratio:.2f}x",
                f"{r['jobs_per_s']:,.0f}",
                f"{r['fake_cpu_us_per_job']:.0f}",
                target,
            ]
        )
    out = table(
        [
            "contender",
            "ok",
            "client CPU µs/job, median (3 runs)",
            "CPU vs raw",
            "jobs/s",
            "fake's CPU µs/job",
            "target",
        ],
        rows,
    )
    no_http = data.get("without_http")
    if no_http:
        out += (
            f"\n\nWith the HTTP taken out (a constant in-process answer, {data['jobs'] * 4} jobs): "
            f"our client **{no_http['ours_cpu_us_per_job']:.1f} µs/job**; the raw loop's "
            f"semaphore + gather + `json.loads` **{no_http['raw_cpu_us_per_job']:.1f} µs/job**."
        )
    if data.get("sweep"):
        levels = list(next(iter(data["sweep"].values())))
        out += "\n\nThroughput (jobs/s, median of 3 runs of " + f"{data['sweep_jobs']} jobs):\n\n"
        out += table(
            ["contender", *(f"c={level}" for level in levels)],
            [[n, *(f"{v:,.0f}" for v in by.values())] for n, by in data["sweep"].items()],
        )
    return out


def breakdown(data: dict[str, Any]) -> str:
    variants = data["variants"]
    raw = variants["raw aiohttp"]["cpu_us_per_job"]
    shipped = variants["ours (first-server), as shipped"]["cpu_us_per_job"]
    rows = []
    for name, r in variants.items():
        value = r["cpu_us_per_job"]
        reference = raw if name.startswith(("raw", "diagnostic")) else shipped
        rows.append(
            [
                name,
                f"{value:.1f}",
                f"{value - reference:+.1f}",
                f"{value / raw:.2f}x",
                f"{r['gen0_collections_per_1000_jobs']:.0f}",
            ]
        )
    return table(
        [
            "variant",
            f"client CPU µs/job (median of {data['repeats']})",
            "Δ vs raw (raw rows) or vs shipped (ours rows)",
            "vs raw",
            "GC gen-0 runs / 1000 jobs",
        ],
        rows,
    )


def makespan(data: dict[str, Any]) -> str:
    rows = []
    for scenario, by_name in data["results"].items():
        bound = data["ideal"] if scenario == "steady" else data["ideal_failure"]
        target = data["targets"][scenario]
        for name, r in by_name.items():
            runs = ", ".join(f"{x:.2f}" for x in r["makespans"])
            lost = data["jobs"] - r["outcomes_min"]
            ours = name != "raw aiohttp"
            verdict = ""
            if name == "least-busy" or ours:
                verdict = f"≤ {target:.2f}x, 0 lost: {_mark(r['ratio'] <= target and lost == 0)}"
            rows.append(
                [
                    scenario,
                    name,
                    f"{r['outcomes_min']}/{data['jobs']} ({r['failed_max']} failed)",
                    f"**{r['makespan']:.2f}** ({runs})",
                    f"{bound:.2f}",
                    f"**{r['ratio']:.3f}x**",
                    f"{r['possible_duplicates_max']} / {r['accepted_extra_max']}",
                    f"{r['retries_median']:.0f}",
                    verdict,
                ]
            )
    return table(
        [
            "scenario",
            "contender",
            "outcomes",
            "makespan s, median (3 runs)",
            "ideal s",
            "vs ideal",
            "flagged possible dup. / really run twice",
            "retries",
            "target",
        ],
        rows,
    )


def queued(data: dict[str, Any]) -> str:
    rows = []
    for name, r in data["results"].items():
        verdict = ""
        if name == "modelslab-async":
            delay_ok = r["relative_mean"] < data["targets"]["delay_fraction"]
            fetch_ok = r["fetches_mean"] <= data["targets"]["fetches_per_job"]
            verdict = (
                f"mean < 10%: {_mark(delay_ok)}; max: {_mark(r['relative_max'] < 0.10)}; "
                f"≤ 3 fetches: {_mark(fetch_ok)}"
            )
        rows.append(
            [
                name,
                f"{r['ok_min']}/{r['jobs']}",
                f"{r['delay_mean_s']:.3f} / {r['delay_max_s']:.3f}",
                f"**{r['relative_mean']:.1%}** / {r['relative_p95']:.1%} / {r['relative_max']:.1%}",
                f"**{r['fetches_mean']:.2f}** / {r['fetches_max']:.0f}",
                r["repeats"],
                verdict,
            ]
        )
    return table(
        [
            "contender",
            "ok",
            "delay s, mean / max",
            "delay / job duration, mean / p95 / max",
            "fetches per job, mean / max",
            "runs",
            "target",
        ],
        rows,
    )


def memory(data: dict[str, Any]) -> str:
    rows = []
    for name, r in data["results"].items():
        s = r["samples"]
        first, last = s[1]["rss_mb"], s[-1]["rss_mb"]
        verdict = ""
        if name.startswith("modelslab-async"):
            ok = r["peak_mb"] < data["target_mb"] and last - first <= 0.5
            verdict = f"< {data['target_mb']:.0f} MB, flat: {_mark(ok)}"
        rows.append(
            [
                name,
                f"{r['ok']:,}/{data['jobs']:,}",
                f"{s[0]['rss_mb']:.1f}",
                f"{first:.1f}",
                f"{last:.1f}",
                f"{last - first:+.1f}",
                f"**{r['peak_mb']:.1f}**",
                f"{r['wall']:.0f}",
                verdict,
            ]
        )
    return table(
        [
            "contender",
            "ok",
            "RSS before MB",
            f"RSS after {data['sample_every']:,} MB",
            f"RSS after {data['jobs']:,} MB",
            "growth MB",
            "peak RSS MB",
            "wall s",
            "target",
        ],
        rows,
    )


def main() -> None:
    for name, render in (
        ("overhead", overhead),
        ("overhead_breakdown", breakdown),
        ("makespan", makespan),
        ("queued", queued),
        ("memory", memory),
    ):
        data = _load(name)
        if data is None:
            continue
        machine = data["machine"]
        print(
            f"<!-- {name}: {machine['date']}, commit {machine.get('library_commit')}, "
            f"load {machine['loadavg_at_start']} -->"
        )
        print(render(data))
        print()


if __name__ == "__main__":
    main()
