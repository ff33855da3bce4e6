"""`make bench`: Backworks side by side with what a user would write or pick instead.

    .venv/bin/python bench/run.py [--quick] [--rounds 3] [--duration 5] [--connections 64]
                                  [--only NAME;NAME...] [--load wrk|python] [--no-save]
                                  [--skip-secondary] [--skip-open-loop] [--skip-dispatch]

One run measures, each as a real server process on loopback pinned to one CPU with
its load generator pinned to another (cpu.py):

1. closed loop (wrk -t1 -c64): the rows of variants.MAIN and SECONDARY. All servers
   start first; then each round loads every server once, in turn, so machine noise
   spreads over all of them. Per measurement: requests/s, and the server's CPU µs
   per request (its whole process tree's CPU time over the window / answers). The
   tables show medians and ratios to the baseline of the same run; the targets
   table holds them to the targets of issues 13 and 19.
2. open loop (bench/loadgen.py): the work plugin (bench/plugins/work.c) at a fixed
   offered rate, latency from each request's due time: p50, p99, max.
3. the host's cost per call over a raw cffi call (bench/dispatch_cost.py).

Everything is kept as JSON under bench/results/. `--quick` is a smoke run: one short
round of each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import dispatch_cost
import hotspots
import load
import report
from cplugins import build_work_plugins
from cpu import Placement, placement
from servers import REPO, Context, Server, Variant, ensure_example_plugins, running
from variants import BASELINE, MAIN, OPEN_LOOP, SECONDARY, OpenLoopRow

RESULTS = REPO / "bench" / "results"


@attrs.frozen
class Settings:
    """How long and how hard each measurement runs."""

    rounds: int
    duration: float
    warmup: float
    connections: int
    open_duration: float
    open_warmup: float
    open_connections: int
    dispatch_calls: int
    profile_seconds: float = 4.0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def closed_loop_rounds(
    servers: Sequence[Server], s: Settings, wrk: str | None, place: Placement
) -> dict[str, list[dict[str, float]]]:
    """Every server loaded once per round, in turn; CPU and answers of each window."""
    results: dict[str, list[dict[str, float]]] = {srv.variant.name: [] for srv in servers}
    for srv in servers:
        load.closed_loop(srv.url, s.warmup, s.connections, wrk, place.load)
    for round_no in range(1, s.rounds + 1):
        for srv in servers:
            before = srv.cpu_seconds()
            burst = load.closed_loop(srv.url, s.duration, s.connections, wrk, place.load)
            used = srv.cpu_seconds() - before
            cpu_us = used / burst.requests * 1e6 if burst.requests else float("nan")
            results[srv.variant.name].append({
                "rps": burst.rate, "cpu_us": cpu_us, "requests": burst.requests,
                "seconds": burst.seconds, "cpu_s": used, "errors": burst.errors,
            })  # fmt: skip
            note = f", {burst.errors} errors" if burst.errors else ""
            _log(f"round {round_no}: {srv.variant.name}: {burst.rate:,.0f} req/s, "
                 f"{cpu_us:.1f} µs CPU/request{note}")  # fmt: skip
    return results


def open_loop_rounds(
    rows: Sequence[OpenLoopRow], servers: Sequence[Server], s: Settings, place: Placement
) -> dict[str, list[dict[str, Any]]]:
    """Every work row at its offered rate once per round, in turn."""
    rates = {row.variant.name: row.rate for row in rows}
    results: dict[str, list[dict[str, Any]]] = {srv.variant.name: [] for srv in servers}
    for round_no in range(1, s.rounds + 1):
        for srv in servers:
            before = srv.cpu_seconds()
            rate = rates[srv.variant.name]
            got = load.open_loop(srv.url, rate, s.open_duration, s.open_warmup,
                                 s.open_connections, place.load)  # fmt: skip
            used = srv.cpu_seconds() - before
            answered = got["completed"] + got["warmup_requests"]
            got["cpu_us"] = used / answered * 1e6 if answered else float("nan")
            results[srv.variant.name].append(got)
            _log(f"round {round_no}: {srv.variant.name} @ {rate:g}/s: "
                 f"p50 {got['p50_us']:,.0f} µs, p99 {got['p99_us']:,.0f} µs, "
                 f"achieved {got['achieved_rate']:,.0f}/s")  # fmt: skip
    for srv in servers:
        served = srv.dispatch()
        for r in results[srv.variant.name]:
            r["served"] = served
    return results


def _selected(variants: Sequence[Variant], only: str | None) -> list[Variant]:
    if not only:
        return list(variants)
    wanted = [part.strip() for part in only.split(";") if part.strip()]
    return [v for v in variants if any(v.name.startswith(w) for w in wanted)]


def settings(args: argparse.Namespace) -> Settings:
    """The measurement settings from the command line (`--quick` shortens every one)."""
    if args.quick:
        return Settings(1, 1.0, 0.5, args.connections, 2.0, 0.5, 64, 5_000, 1.0)
    return Settings(args.rounds, args.duration, args.warmup, args.connections,
                    args.open_duration, 1.0, 64, 20_000)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 short round of each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="s per closed-loop window")
    parser.add_argument("--warmup", type=float, default=1.0, help="s per server, once")
    parser.add_argument("--open-duration", type=float, default=5.0, help="s per open-loop window")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", help="';'-separated starts of row names (default: all)")
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    parser.add_argument("--skip-secondary", action="store_true")
    parser.add_argument("--skip-open-loop", action="store_true")
    parser.add_argument("--skip-dispatch", action="store_true")
    parser.add_argument("--skip-profile", action="store_true", help="no py-spy profile per row")
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (a timeout, a CI job ending) unwinds like Ctrl-C: the `finally`s stop
    # every server this run started instead of leaving them behind.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """`make bench`: every table of one run, printed as Markdown and kept as JSON."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(argv)
    s = settings(args)
    place = placement()
    ensure_example_plugins()
    wrk = load.ensure_wrk() if args.load == "wrk" else None
    closed = _selected(MAIN + ([] if args.skip_secondary else SECONDARY), args.only)
    work_rows = [] if args.skip_open_loop else [
        row for row in OPEN_LOOP if row.variant in _selected([r.variant for r in OPEN_LOOP],
                                                             args.only)
    ]  # fmt: skip
    record: dict[str, Any] = {"machine": report.machine(), "placement": place.describe()}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        folder = Path(tmp)
        work = folder / "plugins"
        work.mkdir(mode=0o755)
        build_work_plugins(work)
        ctx = Context(folder, work, place)
        with running(closed, ctx) as (servers, broken):
            failed.update(broken)
            http = closed_loop_rounds(servers, s, wrk, place)
            served = {srv.variant.name: srv.dispatch() for srv in servers}
            profiles = (
                {}
                if args.skip_profile
                else hotspots.profile_all(servers, s.profile_seconds, wrk, place)
            )
        with running([r.variant for r in work_rows], ctx) as (servers, broken):
            failed.update(broken)
            open_loop = open_loop_rounds(work_rows, servers, s, place)
    costs = None
    if not args.skip_dispatch:
        from backworks.logs import configure_logging

        configure_logging("warning", "console")  # keep worker start-up lines off the tables
        costs = dispatch_cost.measure_all(s.dispatch_calls, s.rounds, cpus=place.server)

    generator = f"wrk -t1 -c{s.connections}" if wrk else f"bench/loadgen.py closed, {s.connections}"
    load_line = (
        f"{generator}, {s.duration:g} s x {s.rounds} rounds, interleaved, medians; "
        f"{place.describe()}; CPU = the server's process tree (utime+stime)"
    )
    print_report(record["machine"], load_line, http, served, open_loop, costs, failed, s)
    targets = report.targets_table(http)[1]
    record.update(load=load_line, settings=attrs.asdict(s), http=http, served=served,
                  targets=targets, open_loop=open_loop, dispatch_us=costs,
                  failed=failed)  # fmt: skip
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"{stamp}.json"
        out.write_text(json.dumps(record, indent=2, default=str))
        print(f"\n(saved {out.relative_to(REPO)})")
        if profiles:
            beside = RESULTS / f"{stamp}-profiles.md"
            beside.write_text(hotspots.markdown(profiles))
            print(f"(profiles: {beside.relative_to(REPO)})")
    return 0


def print_report(
    info: dict[str, str],
    load_line: str,
    http: dict[str, list[dict[str, float]]],
    served: dict[str, str | None],
    open_loop: dict[str, list[dict[str, Any]]],
    costs: dict[str, dict[str, float]] | None,
    failed: dict[str, str],
    s: Settings,
) -> None:
    """The report, in Markdown, on stdout."""
    out: Callable[[str], None] = print
    out(f"\n## HTTP throughput, GET /hello?name=Ada unless named\n\n{report.machine_line(info)}")
    out(f"\nLoad: {load_line}.\n")
    main_rows = {v.name: http[v.name] for v in MAIN if v.name in http}
    base = http.get(BASELINE)
    out(report.throughput_table(main_rows, base, served))
    out("\n### Targets (issues 13 and 19), throughput over the reference row\n")
    out(report.targets_table(http)[0])
    secondary = {v.name: http[v.name] for v in SECONDARY if v.name in http}
    if secondary:
        out("\n### More rows (same run, same baseline)\n")
        out(report.throughput_table(secondary, base, served))
        out("")
        out(report.pairs_table(http))
    if open_loop:
        out(f"\n## Plugin work at a fixed offered rate (open loop)\n\nLoad: bench/loadgen.py "
            f"open loop, {s.open_connections} keep-alive connections, {s.open_duration:g} s "
            f"after {s.open_warmup:g} s warm-up x {s.rounds} rounds, interleaved; latency from "
            f"each request's due time; medians (max: the worst round); \"sent late\": how late "
            f"the generator itself sent (its own delay, counted in the latency).\n")  # fmt: skip
        out(report.open_loop_table(open_loop))
    if costs:
        out("\n## Host cost per plugin call over a raw cffi call (C hello, in one process)\n")
        out(dispatch_cost.table(costs))
    for name, why in failed.items():
        out(f"\n**Not measured: {name}**: {why.splitlines()[0] if why else 'unknown'}")


if __name__ == "__main__":
    sys.exit(main())
