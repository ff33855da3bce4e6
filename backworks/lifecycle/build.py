"""Building one version of a plugin: private copy, test load, backend, runner.

`Builder.build` is the one place a runner is made, at start and on every reload:

1. the library is opened once, checked (plugins/trust.py: owners, modes, the
   `sha256:` pin) and copied from that descriptor to a private file of its own
   (plugins/copies.py): the loader caches by path, the running version's file must
   never be written again, and a file swapped after its check is never loaded;
2. on a reload, the copy is examined by discovery in a child process first, so a
   half-written or hostile file crashes a child, never the server;
3. the copy is loaded and its `init` runs: the canary. Until it has succeeded nothing
   has switched; if it fails, the running version keeps serving.

Nothing is switched here: the Host installs what was built.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import structlog

from backworks.abi import PluginInstance
from backworks.abi.hostlog import plugin_log_sink
from backworks.config import PluginConfig
from backworks.errors import PluginInitError, PluginLoadError
from backworks.isolation.backend import ProcessBackend
from backworks.isolation.probe import probe
from backworks.lifecycle.health import HealthMonitor
from backworks.lifecycle.versions import PluginVersion
from backworks.plugins import discovery
from backworks.plugins.copies import LibraryCopies, LibraryCopy
from backworks.plugins.loading import LoadedPlugin, PluginSpec, PluginState, load_plugin, open_file
from backworks.plugins.trust import check_digest_value
from backworks.runtime.backend import Backend, ThreadBackend
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import DEFAULT_POOL_SIZE, PluginRunner

log = structlog.get_logger("backworks.host")

_PR_SET_NAME, _PR_GET_NAME = 15, 16

# Calls in flight per worker process of a thread-safe plugin when its config sets no
# max_concurrency: a worker starts that many threads up front.
DEFAULT_WORKER_THREADS = 8
# The same for a plugin that is also BW_FLAG_NONBLOCKING: its worker runs the calls in
# turn on one thread, and those in flight wait in the channel, written in batches.
DEFAULT_WORKER_CALLS_NONBLOCKING = 64


class Builder:
    """Makes versions of plugins from their files; owns the private copies."""

    def __init__(self) -> None:
        self._copies = LibraryCopies()

    async def build(
        self,
        spec: PluginSpec,
        settings: PluginConfig,
        *,
        examine: bool = False,
        inline_calls: bool = True,
        compiled_step: bool = True,
    ) -> PluginVersion:
        """Makes one version of a plugin ready to serve; raises BackworksError if it cannot.

        `examine`: test-load the private copy in a child process before this process
        loads it (reloads: the file may be half-written, or replaced by anyone who can
        write the plugin folder). `inline_calls` False: never on the event loop
        (`server.inline_calls`). `compiled_step` False: inline calls without the
        compiled step (`server.compiled_step`).
        """
        loop = asyncio.get_running_loop()
        copy = await loop.run_in_executor(None, self._private_copy, spec)
        private = attrs.evolve(spec, path=copy.path)
        try:
            if settings.isolation == "process":
                backend, limit = await _process_backend(private, settings)
            else:
                if examine:
                    await _examine(private, spec.path)
                backend, limit = await _thread_backend(private, settings)
        except BaseException:
            self._copies.discard(copy)
            raise
        runner = PluginRunner(
            backend,
            max_concurrency=limit,
            timeout_ms=settings.timeout_ms,
            queue_timeout_ms=settings.queue_timeout_ms,
            breaker=CircuitBreaker(
                settings.circuit_breaker.failure_threshold,
                settings.circuit_breaker.recovery_timeout_ms,
            ),
            dispatch=settings.dispatch if inline_calls else "pool",
            compiled_step=compiled_step,
        )
        plugin = LoadedPlugin(spec.name, PluginState.READY, str(spec.path), backend.info)
        health = HealthMonitor(
            runner, interval_ms=settings.health_interval_ms, timeout_ms=settings.health_timeout_ms
        )
        return PluginVersion(
            spec, settings, runner, plugin, copy.version, health, file_key=copy.source_key
        )

    def close(self) -> None:
        """Removes the private copies' folder; what is loaded from it stays mapped."""
        self._copies.close()

    def _private_copy(self, spec: PluginSpec) -> LibraryCopy:
        """The trust checks on the plugin folder's file, then its private copy. Blocking.

        One open file throughout: checked (owners, modes), copied from that same
        descriptor, and the `sha256:` pin checked against the bytes copied, so a file
        swapped after the check, or between the scan and now, is never the one loaded.
        Loading checks the copy again (in its own folder, which only we can write).
        """
        with open_file(spec) as source:
            copy = self._copies.copy(source)
        if spec.sha256:
            try:
                check_digest_value(spec.path, copy.sha256, spec.sha256)
            except PluginLoadError:
                self._copies.discard(copy)
                raise
        return copy


async def _examine(private: PluginSpec, original: Path) -> None:
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(
        None,
        # The copy lies in our own 0700 folder; the original's permissions were checked.
        lambda: discovery.examine(private.path, allow_insecure_permissions=True),
    )
    if not result.ok:
        raise PluginLoadError(original, f"refused by a test load in a child: {result.error}")
    if result.name != private.name:
        msg = f"declares plugin {result.name!r}, but {private.name!r} was expected from it"
        raise PluginLoadError(original, msg)


def _load_announced(spec: PluginSpec, settings: PluginConfig) -> PluginInstance:
    """Loads the plugin here, its `init` announced first. Blocking.

    A crash in `init` ends this process with no answer to log: the line written (and
    flushed) before it is what names the plugin. `backworks plugins inspect --init`
    runs the same `init` in a throwaway child.
    """
    log.info("plugin_init_start", plugin=spec.name, path=str(spec.path))
    for stream in (sys.stderr, sys.stdout):
        stream.flush()
    # The kernel's own crash report (`init:NAME[pid]: segfault at ...`, a core dump's
    # thread name) names the plugin too.
    with _thread_named(f"init:{spec.name}"):
        instance = load_plugin(
            spec, plugin_log_sink(spec.name), max_response_bytes=settings.max_response_bytes
        )
    log.info("plugin_init_done", plugin=spec.name)
    return instance


@contextlib.contextmanager
def _thread_named(name: str) -> Iterator[None]:
    """The calling thread's kernel name is `name` (15 bytes at most) meanwhile (Linux)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    old = ctypes.create_string_buffer(16)
    libc.prctl(_PR_GET_NAME, old, 0, 0, 0)
    libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(_PR_SET_NAME, old.value, 0, 0, 0)


async def _thread_backend(spec: PluginSpec, settings: PluginConfig) -> tuple[Backend, int]:
    """`isolation: in-process`: the library is loaded here and `init` runs here.

    Loading and `init` have the plugin's start budget (`start_timeout_ms`), not its
    per-call `timeout_ms`: a busy machine may take far longer to start a plugin.
    """
    loop = asyncio.get_running_loop()
    try:
        instance = await asyncio.wait_for(
            loop.run_in_executor(None, _load_announced, spec, settings),
            settings.start_timeout_ms / 1000,
        )
    except TimeoutError:
        msg = f"did not start within start_timeout_ms of {settings.start_timeout_ms} ms"
        raise PluginInitError(spec.name, msg) from None
    threads = settings.max_concurrency or (DEFAULT_POOL_SIZE if instance.info.thread_safe else 1)
    # Never two calls on one state without BW_FLAG_THREAD_SAFE (ABI rule 4).
    limit = threads if instance.info.thread_safe else 1
    if settings.max_concurrency and limit < settings.max_concurrency:
        log.warning(
            "plugin_concurrency_capped",
            plugin=spec.name,
            configured=settings.max_concurrency,
            reason="the plugin is not BW_FLAG_THREAD_SAFE",
        )
    return ThreadBackend(instance, limit), limit


async def _process_backend(spec: PluginSpec, settings: PluginConfig) -> tuple[Backend, int]:
    """`isolation: process`: the library is only ever loaded in worker processes.

    The probe and each worker's start have the plugin's start budget
    (`start_timeout_ms`), not its per-call `timeout_ms`.
    """
    limits = settings.process_limits
    workers = limits.workers
    info = await probe(spec, start_timeout_ms=settings.start_timeout_ms)
    # max_concurrency is the plugin's total; each worker takes its share.
    # Without BW_FLAG_THREAD_SAFE a worker runs one call at a time (ABI rule 4).
    per_worker = 1
    if info.thread_safe:
        default = DEFAULT_WORKER_CALLS_NONBLOCKING if info.nonblocking else DEFAULT_WORKER_THREADS
        total = settings.max_concurrency or workers * default
        per_worker = max(1, -(-total // workers))
    elif settings.max_concurrency and settings.max_concurrency > workers:
        log.warning(
            "plugin_concurrency_capped",
            plugin=spec.name,
            configured=settings.max_concurrency,
            reason="the plugin is not BW_FLAG_THREAD_SAFE: one call per worker",
        )
    backend = ProcessBackend(
        info,
        spec,
        limits,
        concurrency_per_worker=per_worker,
        start_timeout_ms=settings.start_timeout_ms,
        max_response_mb=settings.max_response_mb,
    )
    await backend.start()
    # With a standby, one call more may be admitted: a crash's suspect waits for the
    # standby (and runs there) holding its admission slot, which an innocent call
    # behind it would otherwise wait for.
    return backend, workers * per_worker + (1 if limits.standby else 0)
