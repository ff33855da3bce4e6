"""What a bench run prints: the machine, the load, and Markdown tables of the medians.

Throughput is given two ways, both as a ratio to the baseline of the same run:
from requests/s (what a client sees, noisy on a shared machine) and from the
server's CPU µs per request (baseline µs / row µs: how many requests one core could
answer, steadier, since another tenant's load slows the server without making its
requests cost more CPU).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
import statistics
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from variants import PAIRS, TARGETS, Target

Rounds = Sequence[Mapping[str, float]]  # one {"rps", "cpu_us", ...} per round


def machine() -> dict[str, str]:
    """What the figures were measured on: date, CPU, cores, OS, Python, library versions."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count() or 0),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for package in ("aiohttp", "uvloop", "httptools", "cffi", "granian", "extism", "wasmtime"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    return info


def machine_line(info: Mapping[str, str]) -> str:
    """The machine as one line of the report."""
    libs = ", ".join(
        f"{p} {info[p]}"
        for p in ("aiohttp", "uvloop", "httptools", "granian", "extism", "wasmtime", "cffi")
    )
    return (
        f"{info['date']}; {info['cores']} x {info['cpu']}; {info['os']}; "
        f"Python {info['python']}; {libs}"
    )


def median(rounds: Rounds, key: str) -> float:
    """The median of `key` over the rounds (nan when there are none)."""
    values = [r[key] for r in rounds if not math.isnan(r[key])]
    return statistics.median(values) if values else math.nan


def ratios(row: Rounds, reference: Rounds) -> tuple[float, float]:
    """`row`'s throughput over `reference`'s: (from CPU µs per request, from requests/s)."""
    by_cpu = median(reference, "cpu_us") / median(row, "cpu_us")
    by_rate = median(row, "rps") / median(reference, "rps")
    return by_cpu, by_rate


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def throughput_table(
    results: Mapping[str, Rounds], base: Rounds | None, served: Mapping[str, str | None]
) -> str:
    """The medians, each row's ratios to the baseline's (`base`), and how it was served."""
    lines = [
        "| variant | µs CPU / request | x baseline (CPU) | requests/s | x baseline (req/s) "
        "| served as | rounds |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, rounds in results.items():
        by_cpu, by_rate = ratios(rounds, base) if base else (math.nan, math.nan)
        lines.append(
            f"| {name} | {median(rounds, 'cpu_us'):.1f} | {_x(by_cpu)} "
            f"| {median(rounds, 'rps'):,.0f} | {_x(by_rate)} | {served.get(name) or '-'} "
            f"| {len(rounds)} |"
        )
    return "\n".join(lines)


def pairs_table(results: Mapping[str, Rounds]) -> str:
    """PAIRS among the rows measured: one row's throughput over another's."""
    lines = ["| comparison | from CPU µs | from req/s | CPU µs / request |", "|---|---:|---:|---:|"]
    for what, row, other in PAIRS:
        if results.get(row) and results.get(other):
            by_cpu, by_rate = ratios(results[row], results[other])
            diff = median(results[row], "cpu_us") - median(results[other], "cpu_us")
            lines.append(f"| {what} | {_x(by_cpu)} | {_x(by_rate)} | {diff:+.1f} |")
    return "\n".join(lines)


def verdict(value: float, target: Target) -> str:
    """`met` or `missed`, and by how much, for one measured ratio."""
    if math.isnan(value):
        return "not measured"
    met = value > target.goal if target.strictly else value >= target.goal
    if met:
        return f"met (+{value - target.goal:.2f})"
    short = (target.goal - value) / target.goal
    return f"**missed** by {target.goal - value:.2f} ({short:.0%} short)"


def targets_table(results: Mapping[str, Rounds]) -> tuple[str, list[dict[str, Any]]]:
    """Issue 13's targets with the measured ratios and verdicts; also as records for JSON."""
    lines = [
        "| target | goal | measured (CPU) | verdict (CPU) | measured (req/s) | verdict (req/s) |",
        "|---|---:|---:|---|---:|---|",
    ]
    records = []
    for target in TARGETS:
        if not (results.get(target.row) and results.get(target.reference)):
            continue
        by_cpu, by_rate = ratios(results[target.row], results[target.reference])
        against = "baseline" if target.reference.startswith("baseline") else "granian"
        goal = f"{'>' if target.strictly else '≥'} {target.goal:.1f}x {against}"
        lines.append(
            f"| {target.what} | {goal} | {_x(by_cpu)} | {verdict(by_cpu, target)} "
            f"| {_x(by_rate)} | {verdict(by_rate, target)} |"
        )
        records.append({"target": target.what, "goal": target.goal, "reference": target.reference,
                        "by_cpu": by_cpu, "by_rate": by_rate,
                        "verdict_cpu": verdict(by_cpu, target),
                        "verdict_rate": verdict(by_rate, target)})  # fmt: skip
    return "\n".join(lines), records


def _us(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value / 1000:,.2f} ms" if value >= 1000 else f"{value:,.0f} µs"


def open_loop_table(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Per work row: offered and achieved rate, latency percentiles, CPU per request."""
    lines = [
        "| plugin work, lane | offered/s | achieved/s | p50 | p99 | max | µs CPU / request "
        "| errors + unfinished | sent late, p99 | served as |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rounds in results.items():
        if not rounds:
            continue

        def med(key: str, rounds: Sequence[Mapping[str, Any]] = rounds) -> float:
            return statistics.median(float(r[key]) for r in rounds)

        worst = max(float(r["max_us"]) for r in rounds)
        failed = sum(int(r["errors"]) + int(r["unfinished"]) for r in rounds)
        lines.append(
            f"| {name} | {med('offered_rate'):,.0f} | {med('achieved_rate'):,.0f} "
            f"| {_us(med('p50_us'))} | {_us(med('p99_us'))} | {_us(worst)} "
            f"| {med('cpu_us'):.1f} | {failed} | {_us(med('send_lag_p99_us'))} "
            f"| {rounds[-1].get('served') or '-'} |"
        )
    return "\n".join(lines)
