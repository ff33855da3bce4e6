"""The load generators, pinned to the load CPU: wrk (closed loop) and bench/loadgen.py.

wrk -t1 -cN is the closed-loop generator when it is installed (Debian's package); the
bench's own Python generator stands in for it when it is not (it is slower than wrk,
so it may be the bottleneck: the report says which one ran). The open-loop rows
always use loadgen.py's open loop: wrk has none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
from cpu import pinned

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"


@attrs.frozen
class Burst:
    """What one closed-loop measurement got: answers, in how long, how many were errors."""

    requests: int
    seconds: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def ensure_wrk() -> str | None:
    """wrk's path, installing it from Debian's packages when we may; None if impossible."""
    found = shutil.which("wrk")
    if found:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk (apt-get install wrk) ...", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        print(
            "bench: wrk is not installed and cannot be installed here (needs root and apt-get);"
            " falling back to bench/loadgen.py, which may itself be the bottleneck",
            file=sys.stderr,
        )
    return found


def parse_wrk(out: str) -> Burst:
    """wrk's summary as a Burst: its request count and duration, non-2xx answers as errors."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    if not done:
        msg = f"cannot read wrk's output: {out!r}"
        raise RuntimeError(msg)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done[3]]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    failed = int(errors[1]) if errors else 0
    if sockets:
        failed += sum(int(n) for n in sockets.groups())
    return Burst(int(done[1]), float(done[2]) * scale, failed)


def closed_loop(
    url: str, duration: float, connections: int, wrk: str | None, cpus: frozenset[int] | None
) -> Burst:
    """`connections` connections kept busy against `url` for `duration` s (wrk if given)."""
    if wrk:
        argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", url]
        out = subprocess.run(
            argv, check=True, capture_output=True, text=True, preexec_fn=pinned(cpus)
        ).stdout
        return parse_wrk(out)
    result = _loadgen(["closed", url, "--duration", str(duration),
                       "--connections", str(connections)], cpus)  # fmt: skip
    return Burst(int(result["requests"]), float(result["seconds"]), int(result["errors"]))


def open_loop(
    url: str,
    rate: float,
    duration: float,
    warmup: float,
    connections: int,
    cpus: frozenset[int] | None,
) -> dict[str, Any]:
    """loadgen.py's open loop at `rate`/s: latency percentiles, achieved rate, errors."""
    return _loadgen(["open", url, "--rate", str(rate), "--duration", str(duration),
                     "--warmup", str(warmup), "--connections", str(connections)], cpus)  # fmt: skip


def _loadgen(args: list[str], cpus: frozenset[int] | None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(LOADGEN), *args],
        check=True, capture_output=True, text=True, preexec_fn=pinned(cpus),
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out)
    return result
