"""When and what to reload: watched files, the admin route, SIGHUP, a changed config.

The Reloader decides; the Host builds each new version (`Host.build_runner`, whose
`init` is the canary) and switches to it. Changes are made one at a time (`_changes`),
and each runs as a task of its own that its caller's cancellation does not stop: a
reload abandoned halfway would leave a loaded version nobody shuts down. `close()`
waits for the one in progress.

- A watched library that changed is reloaded; a new one in a watched folder is
  examined in a child process and served if usable; one that disappears leaves its
  running version serving (logged).
- A config reload reads and validates the file first (`config_reload_failed` lists
  every problem, and nothing changes). It builds what the new config adds or
  changes, and every library whose file changed since it was loaded (watched or
  not), keeps what is unchanged, switches config, plugins and routes together
  (`Host.switch`), and drains what it drops in the background. Settings only read at
  start (listen address, body limit, logging, dashboard) keep their running values
  and are logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog

from backworks.config import Config, ConfigSource, PluginConfig
from backworks.config.source import keep_restart_only, restart_needed
from backworks.errors import BackworksError, ConfigError, NotReloadable, reason_of
from backworks.lifecycle.host import Host
from backworks.lifecycle.versions import PluginVersion, ReloadStatus, Trigger
from backworks.plugins import discovery
from backworks.plugins.copies import file_key
from backworks.plugins.loading import LoadedPlugin, PluginSpec, PluginState
from backworks.plugins.plan import plan_plugins, plugin_spec
from backworks.plugins.watcher import Watcher, WatchSet

log = structlog.get_logger("backworks.reload")

T = TypeVar("T")


class Reloader:
    """Decides when a plugin or the config is reloaded; the Host builds and switches.

    Built beside the Host by the server (server/app.py), started after it and closed
    before it. Talks to the Host only through its narrow API: `scan`, `build_runner`,
    `install`, `switch`, `retire` and `mark_failed`.
    """

    def __init__(self, host: Host, source: ConfigSource | None) -> None:
        self.host = host
        self.source = source  # the file a config reload reads; None: nothing to reload
        self.statuses: dict[str, ReloadStatus] = {}  # the last reload of each plugin
        self.closing = False
        self._changes = asyncio.Lock()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._watcher: Watcher | None = None

    async def start(self) -> None:
        """Starts watching what the config asks to be watched."""
        await self._watch()

    async def close(self) -> None:
        """Stops watching and waits for a reload in progress; later requests are refused."""
        self.closing = True
        if self._watcher is not None:
            await self._watcher.close()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- one plugin ------------------------------------------------------------------

    async def reload_plugin(self, name: str, *, trigger: Trigger = "admin") -> ReloadStatus:
        """Loads `name`'s library afresh and switches to it if its `init` succeeds.

        Returns how it went (a failed canary leaves the running version serving);
        raises NotReloadable when there is nothing to reload.
        """
        return await self._shielded(self._reload_plugin(name, trigger))

    async def _reload_plugin(self, name: str, trigger: Trigger) -> ReloadStatus:
        async with self._changes:
            if self.closing:
                raise NotReloadable(name, "the server is shutting down")
            spec, settings = self._reload_source(name)
            return await self._reload(spec, settings, trigger)

    def _reload_source(self, name: str) -> tuple[PluginSpec, PluginConfig]:
        host = self.host
        version = host.versions.get(name)
        if version is not None:
            return version.spec, version.settings
        settings = host.config.plugins.get(name)
        plugin = host.plugins.get(name)
        if settings is None and plugin is None:
            raise NotReloadable(name, "no plugin of this name is configured", known=False)
        if settings is not None and not settings.enabled:
            raise NotReloadable(name, "it is disabled in the config")
        settings = settings or PluginConfig(name=name)
        path = settings.path or (Path(plugin.path) if plugin and plugin.path else None)
        if path is None:
            raise NotReloadable(name, "no library file is known to provide it")
        return plugin_spec(name, path, settings), settings

    async def _reload(
        self, spec: PluginSpec, settings: PluginConfig, trigger: Trigger
    ) -> ReloadStatus:
        host, name = self.host, spec.name
        old = host.versions.get(name)
        version = await self._build(spec, settings)
        if isinstance(version, str):
            reason = version
            serving = old.generation if old else None
            status = ReloadStatus(ok=False, trigger=trigger, error=reason, generation=serving)
            self.statuses[name] = status
            if old is None:
                host.mark_failed(name, str(spec.path), reason)
            log.error(
                "plugin_reload_failed",
                plugin=name,
                path=str(spec.path),
                trigger=trigger,
                error=reason,
                serving=serving,
            )
            return status
        host.install(version)
        status = ReloadStatus(ok=True, trigger=trigger, generation=version.generation)
        self.statuses[name] = status
        log.info("plugin_reloaded", plugin=name, trigger=trigger, generation=version.generation)
        return status

    async def _build(self, spec: PluginSpec, settings: PluginConfig) -> PluginVersion | str:
        """A new version, test-loaded in a child first, or why it could not be built."""
        try:
            return await self.host.build_runner(spec, settings, examine=True)
        except BackworksError as e:
            return reason_of(e)

    # -- what the watcher reports ----------------------------------------------------

    async def _library_event(self, path: Path, exists: bool) -> None:
        if exists:
            await self._shielded(self._library_changed(path))
            return
        name = self._name_of(path)
        if name in self.host.versions:
            log.warning(
                "plugin_library_removed",
                plugin=name,
                path=str(path),
                reason="the running version keeps serving",
            )

    async def _config_event(self, path: Path, exists: bool) -> None:
        if not exists:
            log.warning("config_file_missing", path=str(path), reason="the running config stays")
            return
        await self.reload_config(trigger="watch")

    async def _library_changed(self, path: Path) -> None:
        async with self._changes:
            if self.closing:
                return
            name = self._name_of(path)
            if name is None:
                if _in_folders(path, self.host.config):
                    await self._add_library(path)
                return
            try:
                spec, settings = self._reload_source(name)
            except NotReloadable as e:
                log.info("plugin_library_changed", plugin=name, path=str(path), ignored=e.reason)
                return
            if spec.path == path:  # else the config names another file for this plugin
                await self._reload(spec, settings, "watch")

    def _name_of(self, path: Path) -> str | None:
        """The plugin whose library is `path`: running, configured, or failed from it."""
        host = self.host
        for name, version in host.versions.items():
            if version.spec.path == path:
                return name
        for name, settings in host.config.plugins.items():
            if settings.path == path:
                return name
        for name, plugin in host.plugins.items():
            if plugin.path == str(path):
                return name
        return None

    async def _add_library(self, path: Path) -> None:
        """A new library in a watched folder: examined in a child, then served if usable."""
        host = self.host
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            # Only the name is learnt here, in a child; the load for use checks trust.
            None,
            lambda: discovery.examine(path, allow_insecure_permissions=True),
        )
        if not result.ok or result.name is None:
            if not result.skipped:
                log.warning("plugin_library_refused", path=str(path), error=result.error)
            return
        name = result.name
        running = host.versions.get(name)
        settings = host.config.plugins.get(name) or PluginConfig(name=name)
        reason = None
        if running is not None:
            reason = f"plugin {name!r} is already served from {running.spec.path}"
        elif not settings.enabled:
            reason = "the plugin is disabled in the config"
        elif settings.path is not None and settings.path != path:
            reason = f"the config names {settings.path} for this plugin"
        if reason is not None:
            log.warning("plugin_library_ignored", plugin=name, path=str(path), reason=reason)
            return
        version = await self._build(plugin_spec(name, path, settings), settings)
        if isinstance(version, str):
            host.mark_failed(name, str(path), version)
            log.error("plugin_failed_to_start", plugin=name, path=str(path), error=version)
            return
        host.install(version)
        log.info("plugin_added", plugin=name, path=str(path))

    # -- the config ------------------------------------------------------------------

    def request_config_reload(self, trigger: Trigger = "signal") -> None:
        """Starts a config reload and returns at once (for a signal handler)."""
        if self.source is None:
            log.warning("config_reload_skipped", trigger=trigger, reason="no config file")
            return
        if self.closing:
            return
        self._track(asyncio.ensure_future(self.reload_config(trigger=trigger)))

    async def reload_config(self, *, trigger: Trigger) -> bool:
        """Reads the config file again and applies it; False if it was refused."""
        return await self._shielded(self._reload_config(trigger))

    async def _reload_config(self, trigger: Trigger) -> bool:
        async with self._changes:
            if self.closing or self.source is None:
                return False
            running = self.host.config
            loop = asyncio.get_running_loop()
            new = await loop.run_in_executor(None, reread_config, self.source, running, trigger)
            if new is None:
                return False
            changed = any(_file_changed(v) for v in self.host.versions.values())
            if new == running and not changed:
                log.info("config_unchanged", source=str(self.source.path), trigger=trigger)
                return True
            await self._apply(new, trigger)
            return True

    async def _apply(self, new: Config, trigger: Trigger) -> None:
        host = self.host
        plan = plan_plugins(new, await host.scan(new))
        old = dict(host.versions)
        built: dict[str, PluginVersion] = {}
        failed: dict[str, tuple[str, str]] = {}  # name: (path, reason)
        try:
            for name, (spec, settings) in plan.load.items():
                current = old.get(name)
                if (
                    current is not None
                    and (current.spec, current.settings) == (spec, settings)
                    and not _file_changed(current)
                ):
                    continue
                version = await self._build(spec, settings)
                if isinstance(version, str):
                    failed[name] = (str(spec.path), version)
                else:
                    built[name] = version
        except BaseException:
            for version in built.values():  # never switched to: shut down, not leaked
                host.retire(version)
            raise
        versions: dict[str, PluginVersion] = {}
        for name, version in old.items():
            if name in plan.load or name in plan.unusable:
                versions[name] = version  # unchanged, failed to reload, or its file is gone
            elif name not in plan.disabled and _in_folders(version.spec.path, new):
                versions[name] = version  # a discovered plugin whose file went away
        versions.update(built)
        plugins = {name: v.plugin for name, v in versions.items()}
        for name in plan.disabled - versions.keys():
            plugins[name] = LoadedPlugin(name, PluginState.DISABLED)
        for name, unusable in plan.unusable.items():
            if name not in versions:
                plugins[name] = LoadedPlugin(
                    name, PluginState.FAILED, unusable.path, error=unusable.reason
                )
        for name, (path, reason) in failed.items():
            if name not in versions:
                plugins[name] = LoadedPlugin(name, PluginState.FAILED, path, error=reason)
        host.switch(new, versions, plugins)
        self._record(old, built, failed, trigger)
        await self._watch()

    def _record(
        self,
        old: dict[str, PluginVersion],
        built: dict[str, PluginVersion],
        failed: dict[str, tuple[str, str]],
        trigger: Trigger,
    ) -> None:
        for name, version in built.items():
            if name in old:
                self.statuses[name] = ReloadStatus(
                    ok=True, trigger="config", generation=version.generation
                )
        for name, (path, reason) in failed.items():
            before = old.get(name)
            if before is None:
                log.error("plugin_failed_to_start", plugin=name, path=path, error=reason)
                continue
            self.statuses[name] = ReloadStatus(
                ok=False, trigger="config", error=reason, generation=before.generation
            )
            log.error(
                "plugin_reload_failed",
                plugin=name,
                path=path,
                trigger="config",
                error=reason,
                serving=before.generation,
            )
        now = self.host.versions
        for name in old.keys() - now.keys():
            self.statuses.pop(name, None)
        log.info(
            "config_reloaded",
            trigger=trigger,
            added=sorted(built.keys() - old.keys()),
            reloaded=sorted(built.keys() & old.keys()),
            dropped=sorted(old.keys() - now.keys()),
            failed=sorted(failed),
            routes=len(self.host.routes.routes),
        )

    # -- watching --------------------------------------------------------------------

    async def _watch(self) -> None:
        """Starts, changes or stops the watcher to match the running config."""
        wanted = self._watch_set()
        if wanted is None:
            if self._watcher is not None:
                await self._watcher.close()
                self._watcher = None
            return
        if self._watcher is None:
            self._watcher = Watcher(self._library_event, self._config_event)
        await self._watcher.watch(wanted)

    def _watch_set(self) -> WatchSet | None:
        config_file = Path(os.path.normpath(self.source.path.absolute())) if self.source else None
        config = self.host.config
        found = config.discovery
        if not found.watch:
            return WatchSet(config_file=config_file) if config_file else None
        files = frozenset(
            s.path for s in config.plugins.values() if s.enabled and s.path is not None
        )
        folders = found.directories if found.enabled else ()
        return WatchSet(folders, found.recursive, files, config_file)

    # -- tasks -----------------------------------------------------------------------

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(work)
        self._track(task)
        return await asyncio.shield(task)

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here too: its caller may have gone away
        if error is not None and not isinstance(error, NotReloadable):
            log.error("reload_failed", error=repr(error))


def _file_changed(version: PluginVersion) -> bool:
    """Whether `version`'s library file was rebuilt or replaced since it was copied.

    A file that is gone is not a change: the running version keeps serving.
    """
    try:
        now = file_key(version.spec.path.stat())
    except OSError:
        return False
    return version.file_key is not None and now != version.file_key


def _in_folders(path: Path, config: Config) -> bool:
    """Whether discovery under `config` looks at `path`'s folder."""
    found = config.discovery
    if not found.enabled:
        return False
    return any(
        path.parent == folder or (found.recursive and folder in path.parents)
        for folder in found.directories
    )


def reread_config(source: ConfigSource, running: Config, trigger: str) -> Config | None:
    """`source` read and validated again, with the keys only a restart changes kept as
    `running` has them; None (logged with the problems) when the file is refused."""
    try:
        new = source.load()
    except ConfigError as e:
        # The operator's file is wrong, not our code: the problems, no traceback.
        log.error(  # noqa: TRY400
            "config_reload_failed",
            source=e.source,
            problems=e.problems,
            trigger=trigger,
            reason="the running config stays",
        )
        return None
    if needs := restart_needed(running, new):
        log.warning(
            "config_needs_restart",
            keys=needs,
            reason="the server reads these when it starts; the running values stay",
        )
        new = keep_restart_only(running, new)
    return new
