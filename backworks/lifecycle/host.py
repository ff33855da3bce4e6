"""The Host: the running set of plugins, built at startup, changed by reloads.

Startup discovers libraries, decides which file provides each plugin (plan.py), loads
and initialises them (off the event loop: `init` is plugin code), wraps each ready one
in a PluginRunner, and builds the route table. A critical plugin that cannot start
stops the start; any other is kept as `failed` with its reason, and its endpoints
answer 503.

Every version of a plugin, at start and on each reload (reloader.py decides when), is
built by `build_runner` (build.py). `install` then switches: new calls go to the new
runner (one assignment in `runners`, on the event-loop thread), calls in flight
finish on the old one, and the old one's `shutdown` runs after the last of them, in a
background task that `close()` awaits. A version's scheduled health checks
(health.py) start when it is put in service and stop before it is closed.

An old version's native code stays mapped in this process. Unloading native code is
unsafe (a library's thread-local destructors or its runtime may still run after any
"last" call), so every version loaded in-process stays in memory until the process
exits; a server whose plugins are reloaded very often should be restarted now and
then. Under `isolation: process` an old version's workers exit after its drain.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from backworks.config import Config, PluginConfig
from backworks.errors import BackworksError, PluginUnavailableError, StartupError, reason_of
from backworks.lifecycle.build import Builder
from backworks.lifecycle.routes import Endpoint, RouteTable, route_table, shadowed_routes
from backworks.lifecycle.versions import PluginVersion
from backworks.plugins import discovery
from backworks.plugins.loading import LoadedPlugin, PluginSpec, PluginState
from backworks.plugins.plan import plan_plugins
from backworks.runtime.runner import PluginRunner

log = structlog.get_logger("backworks.host")


class Host:
    """What a running server serves: its config, plugins, runners, versions and routes.

    Changed only on the event-loop thread, and only by `install`, `switch`,
    `mark_failed` and `start`: a request reads a consistent set between awaits.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.plugins: dict[str, LoadedPlugin] = {}
        self.runners: dict[str, PluginRunner] = {}
        self.versions: dict[str, PluginVersion] = {}  # the running ones, as in `runners`
        self.routes: RouteTable[Endpoint] = RouteTable(())
        self.draining = False
        self.started_at = time.time()
        self._builder = Builder()
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
        self.routes = route_table(self.config)
        warn_shadowed(self.config)
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

    async def close(self) -> None:
        """Drains each plugin's calls, old versions' too, and calls its `shutdown` once.

        Close the Reloader first: a reload finishing after this would go unclosed.
        """
        drain = self.config.server.shutdown_timeout_ms / 1000
        await asyncio.gather(*(version.health.stop() for version in self.versions.values()))
        await asyncio.gather(
            *(runner.close(drain) for runner in self.runners.values()), *list(self._retiring)
        )
        self._builder.close()
        log.info("plugins_closed", plugins=sorted(self.runners))

    async def scan(self, config: Config) -> list[discovery.ScanResult]:
        found = config.discovery
        if not (found.enabled and found.directories):
            return []
        # A plugin allowed loose permissions must be discoverable too; the registry still
        # refuses, per plugin, every other file that others may write.
        loose = any(p.allow_insecure_permissions for p in config.plugins.values())
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            None,
            lambda: discovery.scan(
                found.directories, recursive=found.recursive, allow_insecure_permissions=loose
            ),
        )
        # One line per library refused, with the reason and fix `plugins inspect` gives:
        # a file that serves nothing says why, not only in a count.
        for result in results:
            if not result.ok and not result.skipped:
                log.warning(
                    "plugin_file_refused", path=result.path, plugin=result.name, error=result.error
                )
        return results

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
        self.mark_failed(name, path, reason)
        if settings is not None and settings.critical:
            msg = f"critical plugin {name!r} could not start: {reason}"
            raise StartupError(msg)
        log.error("plugin_failed_to_start", plugin=name, path=path, error=reason)

    def mark_failed(self, name: str, path: str | None, reason: str) -> None:
        """Records that `name` could not start from `path`, and why (its admin row, 503s)."""
        self.plugins[name] = LoadedPlugin(name, PluginState.FAILED, path, error=reason)

    # -- building a version --------------------------------------------------------

    async def build_runner(
        self, spec: PluginSpec, settings: PluginConfig, *, examine: bool = False
    ) -> PluginVersion:
        """Makes one version of a plugin ready to serve (build.py); switches nothing."""
        server = self.config.server
        return await self._builder.build(
            spec,
            settings,
            examine=examine,
            inline_calls=server.inline_calls,
            compiled_step=server.compiled_step,
        )

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
        version.health.start()
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
        routes = route_table(config)
        warn_shadowed(config)
        old = self.versions
        self.config = config
        self.routes = routes
        self.versions = versions
        self.plugins = plugins
        self.runners = {name: version.runner for name, version in versions.items()}
        for version in versions.values():
            version.health.start()  # the new ones; a running one's goes on
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
        await old.health.stop()
        shut_down = await old.runner.close(drain)
        log.info(
            "plugin_version_retired",
            plugin=old.spec.name,
            generation=old.generation,
            shutdown=shut_down,
        )


def warn_shadowed(config: Config) -> None:
    """Logs each endpoint of `config` that an earlier one keeps from ever matching."""
    for problem in shadowed_routes(config):
        log.warning("route_shadowed", problem=problem)
