"""Reading a library's descriptor in a worker process, never loading it in the host.

Used before an `isolation: process` plugin's workers are started: the host learns the
plugin's flags (thread-safety, hooks) from a worker that loads the library, reports
its descriptor and exits, without running `init`.
"""

from __future__ import annotations

import asyncio
import signal

from backworks.abi import PluginInfo
from backworks.errors import PluginLoadError
from backworks.isolation import framing as fr
from backworks.isolation.process import WorkerProcess
from backworks.plugins.loading import PluginSpec


async def probe(spec: PluginSpec, *, start_timeout_ms: int = 10_000) -> PluginInfo:
    """Reads a library's descriptor in a worker process, never loading it in the host.

    Makes the same file checks as loading for use (permissions, pinned digest, the
    name the config expects) but runs no `init`. Starting the worker and reading the
    descriptor must finish within `start_timeout_ms` (the plugin's start budget).
    Raises PluginLoadError or AbiMismatchError naming the fault.
    """
    timeout = start_timeout_ms / 1000
    loop = asyncio.get_running_loop()
    result: asyncio.Future[PluginInfo] = loop.create_future()
    exited: asyncio.Future[None] = loop.create_future()

    def on_frame(kind: int, call_id: int, body: bytes) -> None:
        if result.done():
            return
        if kind == fr.READY:
            result.set_result(fr.decode_ready(body).info)
        elif kind == fr.START_FAILED:
            result.set_exception(fr.decode_start_error(spec.name, body))

    def on_exit(proc: WorkerProcess) -> None:
        if not result.done():
            why = f"{proc.describe_exit()} while reading the library's descriptor"
            result.set_exception(PluginLoadError(spec.path, why))
        exited.set_result(None)

    init = fr.WorkerInit(
        path=str(spec.path),
        name=spec.name,
        allow_insecure_permissions=spec.allow_insecure_permissions,
        sha256=spec.sha256 or "",
        probe=True,
    )
    proc = WorkerProcess.spawn(on_frame, on_exit)
    proc.send(fr.encode_init(init))
    try:
        return await asyncio.wait_for(asyncio.shield(result), timeout)
    except TimeoutError:
        msg = (
            "a worker did not read the library's descriptor within start_timeout_ms of "
            f"{start_timeout_ms} ms"
        )
        raise PluginLoadError(spec.path, msg) from None
    finally:
        proc.close_channel()  # EOF: a worker still there leaves
        try:
            await asyncio.wait_for(asyncio.shield(exited), 1.0)
        except TimeoutError:
            proc.signal(signal.SIGKILL)
            proc.wait_blocking(1.0)
        if result.done() and not result.cancelled():
            result.exception()  # retrieved: whatever it was has been raised already
