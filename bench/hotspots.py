"""A profile per row: where each server spends its time under load, top 10 frames.

While the row's server is loaded (the same closed loop as its measurement), py-spy
samples it for a few seconds; the frames most often on top of a stack (their own
time, idle excluded) are kept, with their share of the samples. Saved beside the
run's JSON, so a missed target comes with its profile.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import load
from cpu import Placement
from servers import Server

TOP = 10


def py_spy() -> str | None:
    """py-spy's path (the bench extra installs it), or None."""
    return shutil.which("py-spy") or shutil.which(str(Path(sys.executable).parent / "py-spy"))


def top_frames(raw: str, top: int = TOP) -> list[tuple[str, float]]:
    """py-spy's raw (collapsed) stacks as the `top` frames by own samples, with shares."""
    own: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[stack.rsplit(";", 1)[-1]] += int(count)
    total = sum(own.values())
    return [(frame, count / total) for frame, count in own.most_common(top)] if total else []


def profile(
    srv: Server, seconds: float, wrk: str | None, place: Placement
) -> list[tuple[str, float]]:
    """The server's top frames while it is loaded for `seconds`."""
    spy = py_spy()
    if spy is None:
        return []
    burst = threading.Thread(
        target=load.closed_loop, args=(srv.url, seconds + 1.0, 64, wrk, place.load), daemon=True
    )
    burst.start()
    with tempfile.TemporaryDirectory(prefix="bw-prof-") as tmp:
        out = Path(tmp) / "stacks.txt"
        subprocess.run(
            [spy, "record", "--pid", str(srv.proc.pid), "--subprocesses", "--rate", "250",
             "--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(out),
             "--nonblocking"],
            check=False, capture_output=True,
        )  # fmt: skip
        raw = out.read_text() if out.is_file() else ""
    burst.join()
    return top_frames(raw)


def profile_all(
    servers: Sequence[Server], seconds: float, wrk: str | None, place: Placement
) -> dict[str, list[tuple[str, float]]]:
    """Every row's top frames, one row at a time."""
    return {srv.variant.name: profile(srv, seconds, wrk, place) for srv in servers}


def markdown(profiles: dict[str, list[tuple[str, float]]]) -> str:
    """The profiles as Markdown: one table per row."""
    parts = ["# Top frames per row (py-spy, own time, idle excluded)\n"]
    for row, frames in profiles.items():
        parts.append(f"\n## {row}\n")
        if not frames:
            parts.append("\n(no profile: py-spy missing or not allowed to attach)\n")
            continue
        parts.append("\n| share | frame |\n|---:|---|\n")
        parts.extend(f"| {share:.1%} | `{frame}` |\n" for frame, share in frames)
    return "".join(parts)
