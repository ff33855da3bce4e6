"""The Host: everything a running server holds, built at startup, changed by reloads.

Startup discovers libraries, decides which file provides each plugin (plan.py), loads
and initialises them (off the event loop: `init` is plugin code), wraps each ready one
in a PluginRunner, and builds the route table. A critical plugin that cannot start
stops the start; any other is kept as `failed` with its reason, and its endpoints
answer 503.

Every version of a plugin, at start and on each reload (reloader.py decides when), is
made by `build_runner`, the one place a runner is built:

1. the library is copied to a private file of its own (library_copies): the loader
   caches by path, and the running version's file must never be written again;
2. on a reload, the copy is examined by discovery in a child process first, so a
   half-written or hostile file crashes a child, never the server;
3. the copy is loaded and its `init` runs: the canary. Until it has succeeded nothing
   has switched; if it fails, the running version keeps serving.

`install` then switches: new calls go to the new runner (one assignment in `runners`,
on the event-loop thread), calls in flight finish on the old one, and the old one's
`shutdown` runs after the last of them, in a background task that `close()` awaits.

An old version's native code stays mapped in this process. Unloading native code is
unsafe (a library's thread-local destructors or its runtime may still run after any
"last" call), so every version loaded in-process stays in memory until the process
exits; a server whose plugins are reloaded very often should be restarted now and
then. Under `isolation: process` an old version's workers exit after its drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import structlog

import backworks.discovery as discovery
from backworks.breaker import CircuitBreaker
from backworks.config import Config, PluginConfig
from backworks.endpoints import Endpoint, MountedEndpoint, PluginEndpoint, StaticEndpoint
from backworks.errors import (
    BackworksError,
    PluginInitError,
    PluginLoadError,
    PluginUnavailableError,
)
from backworks.executor import DEFAULT_POOL_SIZE, Backend, PluginRunner, ThreadBackend
from backworks.isolation import ProcessBackend, probe
from backworks.library_copies import LibraryCopies, LibraryCopy
from backworks.plan import plan_plugins
from backworks.registry import LoadedPlugin, PluginSpec, PluginState, check_file, load_plugin
from backworks.reload import ConfigSource, PluginVersion, reason_of
from backworks.reloader import Reloader
from backworks.routing import Route, RouteTable

log = structlog.get_logger("backworks.host")

# Calls in flight per worker process of a thread-safe plugin when its config sets no
# max_concurrency: a worker starts that many threads up front.
DEFAULT_WORKER_THREADS = 8

AUTO_MOUNT_PATTERNS = ("/plugins/{plugin}", "/plugins/{plugin}/{tail:.*}")
ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StartupError(BackworksError):
    """A critical plugin could not be started; the server must not open its port."""


class Host:
    def __init__(self, config: Config, *, source: ConfigSource | None = None) -> None:
        self.config = config
        self.plugins: dict[str, LoadedPlugin] = {}
        self.runners: dict[str, PluginRunner] = {}
        self.versions: dict[str, PluginVersion] = {}  # the running ones, as in `runners`
        self.routes: RouteTable[Endpoint] = RouteTable(())
        self.reloader = Reloader(self, source)
        self.draining = False
        self.started_at = time.time()
        self._copies = LibraryCopies()
        self._retiring: set[asyncio.Task[None]] = set()

    # -- the Plugins protocol of endpoints.py ----------------------------------

    def runner(self, name: str) -> PluginRunner:
        runner = self.runners.get(name)
        if runner is not None:
            return runner
        plugin = self.plugins.get(name)
        if plugin is None:
            raise PluginUnavailableError(name, "no plugin of this name is loaded")
        reason = plugin.error or plugin.state.value
        raise PluginUnavailableError(name, f"plugin is {plugin.state.value}: {reason}")

    def is_critical(self, name: str) -> bool:
        """Unknown plugins count as critical: a missing auth hook must fail closed."""
        configured = self.config.plugins.get(name)
        return configured.critical if configured is not None else name not in self.plugins

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        plan = plan_plugins(self.config, await self.scan(self.config))
        for name in sorted(plan.disabled):
            self.plugins[name] = LoadedPlugin(name, PluginState.DISABLED)
        for name, unusable in plan.unusable.items():
            self._fail(name, unusable.path, unusable.reason, unusable.settings)
        for spec, settings in plan.load.values():
            await self._load(spec, settings)
        self.routes = RouteTable(_routes(self.config))
        for endpoint in self.config.endpoints:
            if endpoint.handler and endpoint.handler not in self.plugins:
                log.warning(
                    "endpoint_plugin_missing", endpoint=endpoint.path, plugin=endpoint.handler
                )
        log.info(
            "plugins_ready",
            ready=sorted(self.runners),
            failed=sorted(n for n, p in self.plugins.items() if p.state is PluginState.FAILED),
        )
        await self.reloader.start()

    async def close(self) -> None:
        """Ends reloading (one in progress finishes), then drains each plugin's calls,
        old versions' too, and calls its `shutdown` once."""
        await self.reloader.close()
        drain = self.config.server.shutdown_timeout_ms / 1000
        await asyncio.gather(
            *(runner.close(drain) for runner in self.runners.values()), *list(self._retiring)
        )
        self._copies.close()
        log.info("plugins_closed", plugins=sorted(self.runners))

    async def scan(self, config: Config) -> list[discovery.ScanResult]:
        found = config.discovery
        if not (found.enabled and found.directories):
            return []
        # A plugin allowed loose permissions must be discoverable too; the registry still
        # refuses, per plugin, every other file that others may write.
        loose = any(p.allow_insecure_permissions for p in config.plugins.values())
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None,
            lambda: discovery.scan(
                found.directories, recursive=found.recursive, allow_insecure_permissions=loose
            ),
        )

    async def _load(self, spec: PluginSpec, settings: PluginConfig) -> None:
        try:
            version = await self.build_runner(spec, settings)
        except BackworksError as e:
            self._fail(spec.name, str(spec.path), reason_of(e), settings)
            return
        self.install(version)

    def _fail(
        self, name: str, path: str | None, reason: str, settings: PluginConfig | None
    ) -> None:
        self.plugins[name] = LoadedPlugin(name, PluginState.FAILED, path, error=reason)
        if settings is not None and settings.critical:
            raise StartupError(f"critical plugin {name!r} could not start: {reason}")
        log.error("plugin_failed_to_start", plugin=name, path=path, error=reason)

    # -- building a version --------------------------------------------------------

    async def build_runner(
        self, spec: PluginSpec, settings: PluginConfig, *, examine: bool = False
    ) -> PluginVersion:
        """Makes one version of a plugin ready to serve; raises BackworksError if it cannot.

        The one place a runner is built, at start and on every reload (see the module
        docstring); nothing is switched here. `examine`: test-load the private copy in
        a child process before this process loads it (reloads: the file may be
        half-written, or replaced by anyone who can write the plugin folder).
        """
        loop = asyncio.get_running_loop()
        copy = await loop.run_in_executor(None, self._private_copy, spec)
        private = attrs.evolve(spec, path=copy.path)
        try:
            if settings.isolation == "process":
                backend, limit = await self._process_backend(private, settings)
            else:
                if examine:
                    await self._examine(private, spec.path)
                backend, limit = await self._thread_backend(private, settings)
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
            dispatch=settings.dispatch,
        )
        instance = backend.calls if isinstance(backend, ThreadBackend) else None
        plugin = LoadedPlugin(
            spec.name,
            PluginState.READY,
            str(spec.path),
            backend.info,
            instance,  # type: ignore[arg-type]  # the calls of a ThreadBackend are an instance
        )
        return PluginVersion(spec, settings, runner, plugin, copy.version)

    def _private_copy(self, spec: PluginSpec) -> LibraryCopy:
        """The trust checks on the plugin folder's file, then its private copy. Blocking.

        Loading checks the copy again (its digest is that of the bytes loaded).
        """
        try:
            check_file(spec)
        except OSError as e:  # the file went away between the checks
            raise PluginLoadError(spec.path, f"cannot be read: {e.strerror or e}") from e
        return self._copies.copy(spec.path)

    async def _examine(self, private: PluginSpec, original: Path) -> None:
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

    async def _thread_backend(
        self, spec: PluginSpec, settings: PluginConfig
    ) -> tuple[Backend, int]:
        """`isolation: in-process`: the library is loaded here and `init` runs here."""
        loop = asyncio.get_running_loop()
        try:
            instance = await asyncio.wait_for(
                loop.run_in_executor(None, load_plugin, spec), settings.timeout_ms / 1000
            )
        except TimeoutError:
            msg = f"init did not return within {settings.timeout_ms} ms"
            raise PluginInitError(spec.name, msg) from None
        threads = settings.max_concurrency or (
            DEFAULT_POOL_SIZE if instance.info.thread_safe else 1
        )
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

    async def _process_backend(
        self, spec: PluginSpec, settings: PluginConfig
    ) -> tuple[Backend, int]:
        """`isolation: process`: the library is only ever loaded in worker processes."""
        workers = settings.workers or 1
        info = await probe(spec, timeout=settings.timeout_ms / 1000)
        # max_concurrency is the plugin's total; each worker takes its share.
        # Without BW_FLAG_THREAD_SAFE a worker runs one call at a time (ABI rule 4).
        per_worker = 1
        if info.thread_safe:
            total = settings.max_concurrency or workers * DEFAULT_WORKER_THREADS
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
            workers=workers,
            concurrency_per_worker=per_worker,
            memory_limit_mb=settings.memory_limit_mb,
            cpu_limit_ms=settings.cpu_limit_ms,
            init_timeout_ms=settings.timeout_ms,
        )
        await backend.start()
        return backend, workers * per_worker

    # -- switching versions --------------------------------------------------------

    def install(self, version: PluginVersion) -> None:
        """Puts `version` in service; the one it replaces drains in the background."""
        name = version.spec.name
        old = self.versions.get(name)
        self.versions[name] = version
        self.plugins[name] = version.plugin
        # The switch: one assignment on the event-loop thread. A request that already
        # holds the old runner finishes on it.
        self.runners[name] = version.runner
        if old is not None:
            self.retire(old)
        settings = version.settings
        log.info(
            "plugin_loaded",
            plugin=name,
            version=version.plugin.info.version if version.plugin.info else None,
            path=str(version.spec.path),
            generation=version.generation,
            max_concurrency=version.runner.gate.limit,
            isolation=settings.isolation,
            **({"workers": settings.workers or 1} if settings.isolation == "process" else {}),
        )

    def switch(
        self, config: Config, versions: dict[str, PluginVersion], plugins: dict[str, LoadedPlugin]
    ) -> None:
        """Serves `config` with `versions` from now on; the versions left out drain.

        Config, routes and plugins change together, with no await in between, so a
        request sees all of the old or all of the new.
        """
        routes = RouteTable(_routes(config))
        old = self.versions
        self.config = config
        self.routes = routes
        self.versions = versions
        self.plugins = plugins
        self.runners = {name: version.runner for name, version in versions.items()}
        for name, version in old.items():
            if versions.get(name) is not version:
                self.retire(version)

    def retire(self, old: PluginVersion) -> None:
        """Closes a replaced or dropped version after its calls in flight have finished."""
        drain = self.config.server.shutdown_timeout_ms / 1000
        task = asyncio.create_task(self._close_version(old, drain))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_version(self, old: PluginVersion, drain: float) -> None:
        shut_down = await old.runner.close(drain)
        log.info(
            "plugin_version_retired",
            plugin=old.spec.name,
            generation=old.generation,
            shutdown=shut_down,
        )

    # -- admin -----------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        rows = []
        for name, plugin in sorted(self.plugins.items()):
            info = plugin.info
            row: dict[str, Any] = {
                "name": name,
                "state": plugin.state.value,
                "version": info.version if info else None,
                "abi": info.abi if info else None,
                "path": plugin.path,
                "flags": info.flag_names if info else [],
                "description": info.description if info else None,
                "error": plugin.error,
            }
            version = self.versions.get(name)
            if version is not None:
                row["generation"] = version.generation
            reload = self.reloader.statuses.get(name)
            if reload is not None:
                row["reload"] = reload.to_json()
            runner = self.runners.get(name)
            if runner is not None:
                row.update(runner.snapshot())
            rows.append(row)
        return rows


def _routes(config: Config) -> Iterable[Route[Endpoint]]:
    for ep in config.endpoints:
        target: Endpoint
        if ep.response is not None:
            target = StaticEndpoint(
                ep.path,
                ep.response.status,
                ep.response.body,
                ep.response.content_type,
                tuple(ep.response.headers.items()),
            )
        else:
            assert ep.handler is not None
            target = PluginEndpoint(ep.path, ep.handler, ep.hooks)
        yield Route(ep.path, frozenset(ep.methods), target)
    if config.discovery.auto_mount:
        for pattern in AUTO_MOUNT_PATTERNS:
            yield Route(pattern, ALL_METHODS, MountedEndpoint(pattern))
