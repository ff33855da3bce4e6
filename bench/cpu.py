"""Where the bench's processes run, and how much CPU a server spent: pinning and /proc.

A server is pinned to one CPU and its load generator to another, so the two never
compete for a core and every row gets the same one-core budget. CPU time is read
for the server's whole process tree (worker processes of `isolation: process`,
granian's worker, gunicorn's workers) from /proc/<pid>/stat: utime and stime of each
live process plus cutime and cstime (what its reaped children spent).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import attrs

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@attrs.frozen
class Placement:
    """The CPUs servers and load generators are pinned to (None: not pinned)."""

    server: frozenset[int] | None
    load: frozenset[int] | None

    def describe(self) -> str:
        """One line for the report: which CPU does what."""
        if self.server is None or self.load is None:
            return "not pinned (fewer than 2 CPUs)"
        return f"server on CPU {_cpus(self.server)}, load generator on CPU {_cpus(self.load)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def placement() -> Placement:
    """Server on the first CPU this process may use, load on the second; unpinned on one."""
    if not hasattr(os, "sched_getaffinity"):
        return Placement(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Placement(None, None)
    return Placement(frozenset({cpus[0]}), frozenset({cpus[1]}))


def pinned(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` pinning a child (and so every thread and child it makes) to `cpus`.

    Set before exec, so no thread of the child ever runs elsewhere; children inherit it.
    """
    if cpus is None:
        return None
    chosen = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, chosen)

    return pin


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks incl. reaped children) of `pid`, or None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = text.rsplit(")", 1)[1].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ppid, utime + stime + cutime + cstime


def tree(root: int) -> dict[int, int]:
    """CPU ticks of `root` and each of its live descendants, by pid."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        found = _stat(int(entry.name))
        if found is not None:
            parents[int(entry.name)], ticks[int(entry.name)] = found
    members = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return {pid: ticks[pid] for pid in members if pid in ticks}


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds the process tree under `root` has spent so far (user + system)."""
    return sum(tree(root).values()) / TICKS
