"""What the operator's routes show: the rows of the plugins and the dashboard's state.

Read from the Host (what runs, and the last result of each plugin's scheduled health
checks), the Reloader (how each reload went) and the Traffic record; built on demand,
on the event-loop thread, and calling no plugin code.
"""

from __future__ import annotations

import time
from typing import Any

from backworks.http.traffic import RECENT_REQUESTS, Traffic
from backworks.lifecycle.host import Host
from backworks.lifecycle.reloader import Reloader
from backworks.lifecycle.routes import MountedEndpoint, PluginEndpoint, StaticEndpoint

# What an anonymous reader sees where a plugin's or the config's own words would be.
HIDDEN = "hidden: send the admin token (Authorization: Bearer) to see it"


def plugin_rows(host: Host, reloader: Reloader, *, details: bool) -> list[dict[str, Any]]:
    """One row per plugin: state, version, ABI, flags, breaker, counters.

    With `details` (an authenticated operator) also what the plugin or the config
    says in its own words: the file, the description, why it failed to start or
    reload. Anonymous readers get HIDDEN in their place, never the text. `health`
    is the last scheduled check's status, state and time, never the plugin's report.
    """
    rows = []
    for name, plugin in sorted(host.plugins.items()):
        info = plugin.info
        row: dict[str, Any] = {
            "name": name,
            "state": plugin.state.value,
            "version": info.version if info else None,
            "abi": info.abi if info else None,
            "path": _shown(plugin.path, details),
            "flags": info.flag_names if info else [],
            "description": _shown(info.description if info else None, details),
            "error": _shown(plugin.error, details),
        }
        version = host.versions.get(name)
        if version is not None:
            row["generation"] = version.generation
            if version.health.has_health:
                row["health"] = version.health.public_json()
        reload = reloader.statuses.get(name)
        if reload is not None:
            row["reload"] = {**reload.to_json(), "error": _shown(reload.error, details)}
        runner = host.runners.get(name)
        if runner is not None:
            row.update(runner.snapshot())
        rows.append(row)
    return rows


def _shown(text: str | None, details: bool) -> str | None:
    return text if details or not text else HIDDEN


def state_json(
    host: Host, reloader: Reloader, traffic: Traffic, *, details: bool
) -> dict[str, Any]:
    """Plugins, endpoints and recent requests: what the dashboard polls, no plugin code run."""
    config = host.config
    plugins = plugin_rows(host, reloader, details=details)
    for row in plugins:
        row["error_rate"] = _error_rate(row.get("counters"))
        last = traffic.last_error_json(row["name"])
        if last is not None and not details:  # another client's path and request id
            last = {"time": last["time"], "status": last["status"]}
        row["last_error"] = last
    return {
        "server": {
            "name": config.name,
            "version": config.version,
            "status": "draining" if host.draining else "serving",
            "uptime_s": round(time.time() - host.started_at, 3),
            "time": time.time(),
        },
        "admin": {"token_configured": bool(config.admin.token)},
        "plugins": plugins,
        "endpoints": [
            _endpoint_json(r.pattern, r.methods, r.target, config.hooks) for r in host.routes.routes
        ],
        # Anonymous readers get counts only: other clients' paths and ids are theirs.
        "recent": traffic.recent_json() if details else [],
        "recent_counts": traffic.recent_counts(),
        "errors_by_route": errors_by_route(traffic),
    }


def errors_by_route(traffic: Traffic) -> list[dict[str, Any]]:
    """The 404 and 5xx answers since start, counted by route pattern and status.

    What the recent list cannot show: 860 404s are 860 rows there, one line here.
    Unmatched requests count under one `<unmatched>` route, never by raw path.
    """
    counts: dict[tuple[str, int], int] = {}
    for (_, route, status), count in traffic.requests.items():
        if status == 404 or status >= 500:
            counts[route, status] = counts.get((route, status), 0) + count
    return _error_rows(counts)


def _error_rows(counts: dict[tuple[str, int], int]) -> list[dict[str, Any]]:
    rows = [{"route": r, "status": s, "count": n} for (r, s), n in counts.items()]
    return sorted(rows, key=lambda row: (-row["count"], row["route"], row["status"]))


def _error_rate(counters: dict[str, Any] | None) -> float | None:
    """Failed, timed-out and rejected calls over all calls asked for; None before any."""
    if not counters:
        return None
    asked = counters["calls"] + counters["rejected"]
    errors = counters["failed"] + counters["timed_out"] + counters["rejected"]
    return round(errors / asked, 4) if asked else None


def _endpoint_json(
    pattern: str, methods: frozenset[str], target: object, global_hooks: tuple[str, ...]
) -> dict[str, Any]:
    """`hooks` are all that run, in order: the global ones, then the endpoint's own."""
    row: dict[str, Any] = {"pattern": pattern, "methods": sorted(methods)}
    if isinstance(target, StaticEndpoint):
        row.update(kind="static", status=target.status, hooks=[])
    elif isinstance(target, PluginEndpoint):
        hooks = [*global_hooks, *target.hooks]
        row.update(kind="plugin", handler=target.handler, hooks=hooks)
    elif isinstance(target, MountedEndpoint):
        row.update(kind="mounted", hooks=list(global_hooks))
    return row


# -- several workers as one service ---------------------------------------------------

_BREAKER_RANK = {"closed": 0, "half_open": 1, "open": 2}


def worker_json(pid: int, state: dict[str, Any]) -> dict[str, Any]:
    """One worker's line of the dashboard: its pid, status and each plugin's version and breaker."""
    return {
        "pid": pid,
        "status": state["server"]["status"],
        "uptime_s": state["server"]["uptime_s"],
        "plugins": [
            {
                "name": row["name"],
                "state": row["state"],
                "version": row.get("version"),
                "generation": row.get("generation"),
                "circuit": row.get("circuit"),
                "calls": (row.get("counters") or {}).get("calls"),
            }
            for row in state["plugins"]
        ],
    }


def merge_states(states: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Several workers' `state_json` as one service; the first is the answering worker's.

    Counters are summed, latency percentiles are the worst worker's, a breaker shows its
    worst state, and `workers` lists each worker on its own.
    """
    merged = dict(states[0][1])
    rows: dict[str, dict[str, Any]] = {}
    for _, state in states:
        for row in state["plugins"]:
            had = rows.get(row["name"])
            rows[row["name"]] = dict(row) if had is None else _merge_row(had, row)
    for row in rows.values():
        row["error_rate"] = _error_rate(row.get("counters"))
    merged["plugins"] = [rows[name] for name in sorted(rows)]
    recent = [r for _, state in states for r in state["recent"]]
    merged["recent"] = sorted(recent, key=lambda r: r["time"], reverse=True)[:RECENT_REQUESTS]
    counts: dict[str, int] = {}
    for _, state in states:
        for status, n in state.get("recent_counts", {}).items():
            counts[status] = counts.get(status, 0) + n
    merged["recent_counts"] = counts
    merged["workers"] = [worker_json(p, state) for p, state in states]
    errors: dict[tuple[str, int], int] = {}
    for _, state in states:
        for row in state.get("errors_by_route", ()):
            key = (row["route"], row["status"])
            errors[key] = errors.get(key, 0) + row["count"]
    merged["errors_by_route"] = _error_rows(errors)
    return merged


def _merge_row(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key in ("state", "version", "dispatch"):
        if a.get(key) != b.get(key):
            seen = {str(v) for v in (a.get(key), b.get(key)) if v is not None}
            out[key] = " / ".join(sorted(seen))
    if b.get("circuit") and _BREAKER_RANK.get(b["circuit"], 0) > _BREAKER_RANK.get(
        a.get("circuit") or "closed", 0
    ):
        out["circuit"] = b["circuit"]
    for key in ("consecutive_failures",):
        out[key] = max(a.get(key) or 0, b.get(key) or 0)
    if "circuit_opened" in b:
        out["circuit_opened"] = (a.get("circuit_opened") or 0) + b["circuit_opened"]
    ca, cb = a.get("counters"), b.get("counters")
    if ca and cb:
        counters = {k: ca[k] + cb[k] for k in ca if k != "latency_ms" and k in cb}
        counters["latency_ms"] = {
            q: max(
                (v for v in (ca["latency_ms"].get(q), cb["latency_ms"].get(q)) if v is not None),
                default=None,
            )
            for q in ca["latency_ms"]
        }
        out["counters"] = counters
    elif cb:
        out["counters"] = cb
    la, lb = a.get("last_error"), b.get("last_error")
    if lb and (not la or lb["time"] > la["time"]):
        out["last_error"] = lb
    return out
