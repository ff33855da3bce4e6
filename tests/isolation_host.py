"""A minimal host for the kill -9 test: `python -m tests.isolation_host LIB NAME WORKERS`.

Starts a ProcessBackend, prints `{"workers": [pid, ...]}` on one line, then waits to
be killed. Its workers must not outlive it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from backworks.config import ProcessLimits
from backworks.isolation.backend import ProcessBackend
from backworks.isolation.probe import probe
from backworks.logs import configure_logging
from backworks.plugins.loading import PluginSpec


async def main(path: str, name: str, workers: int) -> None:
    configure_logging("warning", "json")  # stderr: stdout carries the answer
    spec = PluginSpec(name=name, path=Path(path))
    backend = ProcessBackend(await probe(spec), spec, ProcessLimits(workers=workers))
    await backend.start()
    pids = [w["pid"] for w in backend.snapshot()["workers"]]
    print(json.dumps({"workers": pids}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
