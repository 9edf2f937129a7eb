"""
The plots of `benchmarks/README.md`, from the result JSON files in `benchmarks/results/`.

Run: ``python benchmarks/plots.py`` (after the benchmarks; `run_all.py` does both).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
from _fakeproc import HERE, RESULTS

SMOOTH_SECONDS = 1.0  # utilisation is averaged over this centred window


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def throughput(data: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, by_level in data["sweep"].items():
        levels = [int(level) for level in by_level]
        ax.plot(levels, list(by_level.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(level) for level in next(iter(data["sweep"].values()))])
    ax.get_xaxis().set_major_formatter(mpl.ticker.ScalarFormatter())
    ax.set_xlabel("concurrency (jobs in flight)")
    ax.set_ylabel("jobs/s (median of 3 runs)")
    ax.set_title(
        f"Instant jobs against a fake in another process, {data['sweep_jobs']} jobs a point\n"
        "(2 cores: client and fake each take about one)",
        fontsize=10,
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _smooth(times: list[float], values: list[float]) -> list[float]:
    """Centred moving average over SMOOTH_SECONDS."""
    half = SMOOTH_SECONDS / 2
    out = []
    for t in times:
        window = [v for u, v in zip(times, values, strict=True) if t - half <= u <= t + half]
        out.append(sum(window) / len(window))
    return out


def utilisation(data: dict[str, Any], out: Path) -> None:
    contenders = ["least-busy", "first-server", "raw aiohttp"]
    scenarios = ["steady", "failure"]
    fig, axes = plt.subplots(
        len(scenarios), len(contenders), figsize=(12, 6), sharex=True, sharey=True
    )
    servers = data["servers"]
    for row, scenario in enumerate(scenarios):
        for col, name in enumerate(contenders):
            ax = axes[row][col]
            result = data["results"][scenario][name]
            samples = result["samples"]
            times = [s["t"] for s in samples]
            for server in servers:
                busy = [s["busy"][server["name"]] for s in samples]
                label = f"{server['name']} ({server['slots']}x{server['service_time']}s)"
                ax.plot(times, _smooth(times, busy), label=label, linewidth=1.2)
            ideal = data["ideal"] if scenario == "steady" else data["ideal_failure"]
            ax.axvline(ideal, color="black", linestyle=":", linewidth=1)
            failed_at = result["median_run"].get("failed_at")
            if failed_at is not None:
                ax.axvline(failed_at, color="red", linestyle="--", linewidth=1)
            ax.set_title(
                f"{scenario}: {name}\nmakespan {result['makespan']:.1f}s "
                f"= {result['ratio']:.2f}x ideal",
                fontsize=9,
            )
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            if row == len(scenarios) - 1:
                ax.set_xlabel("seconds")
            if col == 0:
                ax.set_ylabel("busy slots / slots")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"Per-server utilisation, {data['jobs']} jobs (fake's own count, "
        f"centred {SMOOTH_SECONDS:g} s moving average; "
        f"dotted: ideal makespan; dashed red: {data['fail_server']} goes down)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def memory(data: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, result in data["results"].items():
        samples = result["samples"]
        ax.plot(
            [s["outcomes"] for s in samples],
            [s["rss_mb"] for s in samples],
            marker="o",
            label=f"{name} (peak {result['peak_mb']:.0f} MB)",
        )
    ax.axhline(data["target_mb"], color="red", linestyle=":", label="target")
    ax.set_xlabel("outcomes received")
    ax.set_ylabel("RSS, MB")
    ax.set_yscale("log")
    ax.set_title(f"{data['jobs']:,} jobs through an in-process transport", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    made = []
    if (data := _load("overhead")) and data.get("sweep"):
        throughput(data, HERE / "throughput_vs_concurrency.png")
        made.append("throughput_vs_concurrency.png")
    if data := _load("makespan"):
        utilisation(data, HERE / "utilisation.png")
        made.append("utilisation.png")
    if data := _load("memory"):
        memory(data, HERE / "memory.png")
        made.append("memory.png")
    print("plots:", ", ".join(made) or "none (run the benchmarks first)")


if __name__ == "__main__":
    main()
