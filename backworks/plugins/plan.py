"""Which file provides each plugin: the one decision that startup and a config reload share.

From a config and what discovery found, every plugin name gets exactly one verdict:
load this file with these settings, disabled, or unusable with a reason. Nothing is
loaded here; the Host acts on the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import attrs

from backworks.config import Config, PluginConfig
from backworks.plugins.examine import ScanResult
from backworks.plugins.loading import PluginSpec


@attrs.frozen
class Unusable:
    """A plugin that cannot start, and why; `settings` None for one nobody configured."""

    path: str | None
    reason: str
    settings: PluginConfig | None


@attrs.frozen
class Plan:
    """Every plugin name's verdict: load (file and settings), unusable (why) or disabled."""

    load: Mapping[str, tuple[PluginSpec, PluginConfig]]
    unusable: Mapping[str, Unusable]
    disabled: frozenset[str]

    def names(self) -> frozenset[str]:
        return frozenset(self.load) | frozenset(self.unusable) | self.disabled


def plan_plugins(config: Config, found: list[ScanResult]) -> Plan:
    """Decides which file provides each plugin of `config`, and of each library `found`."""
    by_name: dict[str, list[ScanResult]] = {}
    for result in found:
        if result.name:
            by_name.setdefault(result.name, []).append(result)
    load: dict[str, tuple[PluginSpec, PluginConfig]] = {}
    unusable: dict[str, Unusable] = {}
    disabled: set[str] = set()
    for name, settings in config.plugins.items():
        if not settings.enabled:
            disabled.add(name)
            continue
        path = settings.path
        if path is None:
            candidates = by_name.get(name, [])
            usable = [r for r in candidates if r.ok]
            if len(usable) != 1 or len(candidates) != 1:
                unusable[name] = Unusable(None, _why_not_found(name, candidates), settings)
                continue
            path = Path(usable[0].path)
        load[name] = (plugin_spec(name, path, settings), settings)
    # Dropping a library into a discovered folder is enough to serve it.
    for name, results in by_name.items():
        if name in config.plugins:
            continue
        if len(results) == 1 and results[0].ok:
            settings = PluginConfig(name=name)
            load[name] = (plugin_spec(name, Path(results[0].path), settings), settings)
        else:
            unusable[name] = Unusable(results[0].path, _why_not_found(name, results), None)
    return Plan(MappingProxyType(load), MappingProxyType(unusable), frozenset(disabled))


def plugin_spec(name: str, path: Path, settings: PluginConfig) -> PluginSpec:
    """What to load for plugin `name`: its file and the trust settings of its config."""
    return PluginSpec(
        name=name,
        path=path,
        config_json=settings.config_json,
        allow_insecure_permissions=settings.allow_insecure_permissions,
        sha256=settings.sha256,
    )


def _why_not_found(name: str, candidates: list[ScanResult]) -> str:
    if not candidates:
        return f"no library in plugin_discovery.directories declares plugin {name!r}"
    if len(candidates) > 1:
        paths = ", ".join(r.path for r in candidates)
        return f"several libraries declare plugin {name!r}: {paths}; set plugins.{name}.path"
    return candidates[0].error or "unusable"
