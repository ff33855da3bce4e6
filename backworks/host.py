"""The Host: everything a running server holds, built at startup and closed at shutdown.

Startup discovers libraries, decides which file provides each plugin, loads and
initialises them (off the event loop: `init` is plugin code), wraps each ready one in
a PluginRunner, and builds the route table. A critical plugin that cannot start stops
the start; any other is kept as `failed` with its reason, and its endpoints answer 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

import backworks.discovery as discovery
from backworks.breaker import CircuitBreaker
from backworks.config import Config, PluginConfig
from backworks.endpoints import Endpoint, MountedEndpoint, PluginEndpoint, StaticEndpoint
from backworks.errors import BackworksError, PluginError, PluginUnavailableError
from backworks.executor import DEFAULT_POOL_SIZE, Backend, PluginRunner, ThreadBackend
from backworks.isolation import ProcessBackend, probe
from backworks.registry import LoadedPlugin, PluginSpec, PluginState, load_plugin
from backworks.routing import Route, RouteTable

log = structlog.get_logger("backworks.host")

AUTO_MOUNT_PATTERNS = ("/plugins/{plugin}", "/plugins/{plugin}/{tail:.*}")
ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StartupError(BackworksError):
    """A critical plugin could not be started; the server must not open its port."""


class Host:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.plugins: dict[str, LoadedPlugin] = {}
        self.runners: dict[str, PluginRunner] = {}
        self.routes: RouteTable[Endpoint] = RouteTable(())
        self.draining = False
        self.started_at = time.time()

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
        loop = asyncio.get_running_loop()
        found: list[discovery.ScanResult] = []
        if self.config.discovery.enabled and self.config.discovery.directories:
            found = await loop.run_in_executor(
                None,
                lambda: discovery.scan(
                    self.config.discovery.directories, recursive=self.config.discovery.recursive
                ),
            )
        specs = self._plan(found)
        for spec, settings in specs:
            await self._load(spec, settings)
        self.routes = RouteTable(self._routes())
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

    def _plan(self, found: list[discovery.ScanResult]) -> list[tuple[PluginSpec, PluginConfig]]:
        """Decides which file provides each plugin; records those that cannot start."""
        by_name: dict[str, list[discovery.ScanResult]] = {}
        for result in found:
            if result.name:
                by_name.setdefault(result.name, []).append(result)
        specs: list[tuple[PluginSpec, PluginConfig]] = []
        for name, settings in self.config.plugins.items():
            if not settings.enabled:
                self.plugins[name] = LoadedPlugin(name, PluginState.DISABLED)
                continue
            path = settings.path
            if path is None:
                candidates = by_name.get(name, [])
                usable = [r for r in candidates if r.ok]
                if len(usable) != 1 or len(candidates) != 1:
                    self._fail(name, None, _why_not_found(name, candidates), settings)
                    continue
                path = Path(usable[0].path)
            specs.append((_spec(name, path, settings), settings))
        # Dropping a library into a discovered folder is enough to serve it.
        for name, results in by_name.items():
            if name in self.config.plugins:
                continue
            if len(results) == 1 and results[0].ok:
                settings = PluginConfig(name=name)
                specs.append((_spec(name, Path(results[0].path), settings), settings))
            else:
                self._fail(name, results[0].path, _why_not_found(name, results), None)
        return specs

    async def _load(self, spec: PluginSpec, settings: PluginConfig) -> None:
        if settings.isolation == "process":
            await self._load_isolated(spec, settings)
            return
        loop = asyncio.get_running_loop()
        try:
            instance = await asyncio.wait_for(
                loop.run_in_executor(None, load_plugin, spec), settings.timeout_ms / 1000
            )
        except TimeoutError:
            self._fail(
                spec.name,
                str(spec.path),
                f"init did not return within {settings.timeout_ms} ms",
                settings,
            )
            return
        except BackworksError as e:
            reason = e.message if isinstance(e, PluginError) else str(e)
            self._fail(spec.name, str(spec.path), reason, settings)
            return
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
        self._add_runner(spec, settings, ThreadBackend(instance, limit), limit)
        self.plugins[spec.name] = LoadedPlugin(
            spec.name, PluginState.READY, str(spec.path), instance.info, instance
        )
        log.info(
            "plugin_loaded",
            plugin=spec.name,
            version=instance.info.version,
            path=str(spec.path),
            max_concurrency=limit,
        )

    async def _load_isolated(self, spec: PluginSpec, settings: PluginConfig) -> None:
        """`isolation: process`: the library is only ever loaded in worker processes."""
        workers = settings.workers or 1
        try:
            info = await probe(spec, timeout=settings.timeout_ms / 1000)
            # max_concurrency is the plugin's total; each worker takes its share.
            # Without BW_FLAG_THREAD_SAFE a worker runs one call at a time (ABI rule 4).
            per_worker = 1
            if info.thread_safe:
                total = settings.max_concurrency or workers * DEFAULT_POOL_SIZE
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
        except BackworksError as e:
            reason = e.message if isinstance(e, PluginError) else str(e)
            self._fail(spec.name, str(spec.path), reason, settings)
            return
        limit = workers * per_worker
        self._add_runner(spec, settings, backend, limit)
        self.plugins[spec.name] = LoadedPlugin(spec.name, PluginState.READY, str(spec.path), info)
        log.info(
            "plugin_loaded",
            plugin=spec.name,
            version=info.version,
            path=str(spec.path),
            max_concurrency=limit,
            isolation="process",
            workers=workers,
        )

    def _add_runner(
        self, spec: PluginSpec, settings: PluginConfig, backend: Backend, limit: int
    ) -> None:
        self.runners[spec.name] = PluginRunner(
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

    def _fail(
        self, name: str, path: str | None, reason: str, settings: PluginConfig | None
    ) -> None:
        self.plugins[name] = LoadedPlugin(name, PluginState.FAILED, path, error=reason)
        if settings is not None and settings.critical:
            raise StartupError(f"critical plugin {name!r} could not start: {reason}")
        log.error("plugin_failed_to_start", plugin=name, path=path, error=reason)

    def _routes(self) -> Iterable[Route[Endpoint]]:
        for ep in self.config.endpoints:
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
        if self.config.discovery.auto_mount:
            for pattern in AUTO_MOUNT_PATTERNS:
                yield Route(pattern, ALL_METHODS, MountedEndpoint(pattern))

    async def close(self) -> None:
        """Drains each plugin's calls, then calls its `shutdown` once."""
        drain = self.config.server.shutdown_timeout_ms / 1000
        await asyncio.gather(*(runner.close(drain) for runner in self.runners.values()))
        log.info("plugins_closed", plugins=sorted(self.runners))

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
            runner = self.runners.get(name)
            if runner is not None:
                row.update(runner.snapshot())
            rows.append(row)
        return rows


def _spec(name: str, path: Path, settings: PluginConfig) -> PluginSpec:
    return PluginSpec(
        name=name,
        path=path,
        config_json=settings.config_json,
        allow_insecure_permissions=settings.allow_insecure_permissions,
        sha256=settings.sha256,
    )


def _why_not_found(name: str, candidates: list[discovery.ScanResult]) -> str:
    if not candidates:
        return f"no library in plugin_discovery.directories declares plugin {name!r}"
    if len(candidates) > 1:
        paths = ", ".join(r.path for r in candidates)
        return f"several libraries declare plugin {name!r}: {paths}; set plugins.{name}.path"
    return candidates[0].error or "unusable"
