"""Reading a library's descriptor in a worker process, never loading it in the host.

Used before an `isolation: process` plugin's workers are started: the host learns the
plugin's flags (thread-safety, hooks) from a worker that loads the library, reports
its descriptor and exits, without running `init`. `try_init` runs `init` there too,
with a given config, then `shutdown`: `backworks plugins inspect --init` finds the
plugin whose `init` crashes without taking a server down.
"""

from __future__ import annotations

import asyncio
import signal

from backworks.abi import PluginInfo
from backworks.errors import PluginInitError, PluginLoadError
from backworks.isolation import framing as fr
from backworks.isolation.process import WorkerProcess
from backworks.plugins.loading import PluginSpec


class InitCrashError(PluginInitError):
    """`init` killed its throwaway worker; `dump` is the crash output it left."""

    def __init__(self, plugin: str, message: str, dump: str) -> None:
        super().__init__(plugin, message)
        self.dump = dump


async def try_init(spec: PluginSpec, *, start_timeout_ms: int = 10_000) -> PluginInfo:
    """Loads the library in a throwaway worker and runs `init` with `spec`'s config.

    Then `shutdown`, and the worker exits. Raises PluginLoadError, PluginInitError
    (the plugin's own reason, or InitCrashError with the crash output when `init`
    killed the worker).
    """
    return await probe(spec, start_timeout_ms=start_timeout_ms, run_init=True)


async def probe(
    spec: PluginSpec, *, start_timeout_ms: int = 10_000, run_init: bool = False
) -> PluginInfo:
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
            if run_init:
                why = f"{proc.describe_exit()} while loading the library or running init"
                result.set_exception(InitCrashError(spec.name, why, proc.crash_dump))
            else:
                why = f"{proc.describe_exit()} while reading the library's descriptor"
                result.set_exception(PluginLoadError(spec.path, why))
        exited.set_result(None)

    init = fr.WorkerInit(
        path=str(spec.path),
        name=spec.name,
        allow_insecure_permissions=spec.allow_insecure_permissions,
        sha256=spec.sha256 or "",
        config_json=spec.config_json,
        probe=not run_init,
    )
    proc = WorkerProcess.spawn(on_frame, on_exit)
    proc.send(fr.encode_init(init))
    try:
        info = await asyncio.wait_for(asyncio.shield(result), timeout)
        if run_init:  # its state is shut down as a server would: one init, one shutdown
            proc.send(fr.frame(fr.SHUTDOWN, 1))
            try:
                await asyncio.wait_for(asyncio.shield(exited), timeout)
            except TimeoutError:
                msg = f"shutdown did not return within start_timeout_ms of {start_timeout_ms} ms"
                raise PluginInitError(spec.name, msg) from None
        return info
    except TimeoutError:
        what = "run init" if run_init else "read the library's descriptor"
        msg = f"a worker did not {what} within start_timeout_ms of {start_timeout_ms} ms"
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
