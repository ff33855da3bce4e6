"""A minimal host of worker processes, in a fresh small Python process.

`python -m tests.isolation_host LIB NAME WORKERS`: starts a ProcessBackend, prints
`{"workers": [pid, ...]}` on one line, then waits to be killed. Its workers must not
outlive it (the kill -9 test).

`python -m tests.isolation_host LIB NAME WORKERS MEMORY_LIMIT_MB PATH`: starts one
with that memory limit, makes one POST call to PATH and prints `{"error": ...}` (or
`{"status": ...}`). A host whose own memory never peaked above its worker's, as a
small server's: what the worker's crash message says of memory is then decided by
the worker's own peak.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from backworks.abi import CancelFlag, Request
from backworks.config import ProcessLimits
from backworks.errors import BackworksError
from backworks.isolation.backend import ProcessBackend
from backworks.isolation.probe import probe
from backworks.logs import configure_logging
from backworks.plugins.loading import PluginSpec


async def main(path: str, name: str, workers: int, call: tuple[str, ...]) -> None:
    configure_logging("warning", "json")  # stderr: stdout carries the answer
    spec = PluginSpec(name=name, path=Path(path))
    limits = ProcessLimits(workers=workers, memory_limit_mb=int(call[0]) if call else None)
    backend = ProcessBackend(await probe(spec), spec, limits)
    await backend.start()
    if call:
        try:
            path, _, query = call[1].partition("?")
            req = Request("POST", path, query=query)
            resp = await backend.start_handle(req, CancelFlag())
        except BackworksError as e:
            print(json.dumps({"error": str(e)}), flush=True)
        else:
            print(json.dumps({"status": resp.status}), flush=True)
        backend.close()
        return
    pids = [w["pid"] for w in backend.snapshot()["workers"]]
    print(json.dumps({"workers": pids}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), tuple(sys.argv[4:])))
