"""The admin routes under /_backworks: liveness, plugin state, closing a breaker, reloading.

The routes that change something, or run plugin code, are wrapped in
`requires_admin_token`. The public ones read what the server holds and call no plugin
code: a plugin's health is the last result of its scheduled checks (lifecycle/health.py).
"""

from __future__ import annotations

import time

from aiohttp import web

from backworks.errors import NotReloadable
from backworks.http.aio.envelope import envelope
from backworks.http.aio.keys import REQUEST_ID
from backworks.http.aio.state import HOST, RELOADER
from backworks.ops.auth import is_admin, requires_admin_token
from backworks.ops.cluster import cluster_of, json_body
from backworks.ops.views import plugin_rows


def add_admin_routes(app: web.Application) -> None:
    """Adds /_backworks/health, /_backworks/plugins and the token-guarded POST routes."""
    app.router.add_get("/_backworks/health", health)
    app.router.add_get("/_backworks/plugins", plugins)
    app.router.add_post("/_backworks/plugins/{name}/reset", reset)
    app.router.add_post("/_backworks/plugins/{name}/reload", reload)
    app.router.add_post("/_backworks/plugins/{name}/health", check_health)


async def health(request: web.Request) -> web.Response:
    """200 while serving, 503 while draining: what a load balancer probes."""
    host = request.app[HOST]
    status = "draining" if host.draining else "serving"
    body = {"status": status, "uptime_s": round(time.time() - host.started_at, 3)}
    return web.json_response(body, status=503 if host.draining else 200)


async def plugins(request: web.Request) -> web.Response:
    """Every plugin with its state, breaker, counters and its last health check.

    Runs no plugin code, so polling it costs the plugins nothing. The plugin's own
    words (its file, why it failed, its health report) only with the admin token.
    """
    rows = plugin_rows(request.app[HOST], request.app[RELOADER], details=is_admin(request))
    return web.json_response({"plugins": rows})


@requires_admin_token
async def reset(request: web.Request) -> web.Response:
    """Closes a plugin's circuit breaker now, instead of after its recovery timeout.

    For an operator who fixed what made the plugin fail: the next call goes through.
    Under `--workers N` every worker closes its breaker (`workers` says how each went).
    """
    name = request.match_info["name"]
    here = reset_here(request.app, name, request[REQUEST_ID])
    return await _everywhere(request, here, f"/plugins/{name}/reset")


def reset_here(app: web.Application, name: str, rid: str) -> web.Response:
    """`reset` in this process only."""
    runner = app[HOST].runners.get(name)
    if runner is None:
        msg = f"no running plugin is named {name!r}"
        return envelope(404, "not_found", msg, rid, plugin=name)
    was = runner.breaker.state.value
    # A success is exactly "close and forget the failures"; a probe still running
    # records its own outcome later, as it would have anyway.
    runner.breaker.reset()
    return web.json_response({"plugin": name, "circuit": runner.breaker.state.value, "was": was})


@requires_admin_token
async def reload(request: web.Request) -> web.Response:
    """Loads a plugin's library file afresh and switches to it once its `init` succeeded.

    Calls in flight finish on the old version, whose `shutdown` runs after the last of
    them. If the new file cannot be loaded or its `init` fails, nothing switches: 502
    `reload_failed` with the reason, and the old version keeps serving. The plugin's
    admin row shows the last reload (`reload`: when, ok, error). Under `--workers N`
    every worker reloads; the answer's `workers` says how each went, and its status is
    the worst of theirs.

    An in-process plugin's old code stays mapped in the server until it restarts:
    unloading native code is unsafe, so each reload adds the new version's code.
    """
    name = request.match_info["name"]
    here = await reload_here(request.app, name, request[REQUEST_ID])
    return await _everywhere(request, here, f"/plugins/{name}/reload")


async def reload_here(app: web.Application, name: str, rid: str) -> web.Response:
    """`reload` in this process only."""
    host = app[HOST]
    try:
        status = await app[RELOADER].reload_plugin(name, trigger="admin")
    except NotReloadable as e:
        code, http = ("not_reloadable", 409) if e.known else ("not_found", 404)
        return envelope(http, code, str(e), rid, plugin=name)
    if not status.ok:
        after = "the running version keeps serving" if name in host.runners else "it stays down"
        msg = f"plugin {name!r} was not reloaded, {after}: {status.error}"
        return envelope(502, "reload_failed", msg, rid, plugin=name)
    info = host.plugins[name].info
    body = {"plugin": name, "version": info.version if info else None, "reload": status.to_json()}
    return web.json_response(body)


@requires_admin_token
async def check_health(request: web.Request) -> web.Response:
    """Runs one health check of a plugin now and answers with its full report.

    Unlike the schedule, it waits for the plugin's state like a call (up to the
    plugin's `health_timeout_ms`), and it shows the plugin's own words (`details`,
    `error`). The result also becomes the one the public routes show. Under
    `--workers N` every worker checks its own copy of the plugin.
    """
    name = request.match_info["name"]
    here = await check_health_here(request.app, name, request[REQUEST_ID])
    return await _everywhere(request, here, f"/plugins/{name}/health")


async def check_health_here(app: web.Application, name: str, rid: str) -> web.Response:
    """`check_health` in this process only."""
    version = app[HOST].versions.get(name)
    if version is None:
        msg = f"no running plugin is named {name!r}"
        return envelope(404, "not_found", msg, rid, plugin=name)
    report = await version.health.check_now()
    body = {"plugin": name, "health": report.admin_json() if report is not None else None}
    return web.json_response(body)


async def _everywhere(request: web.Request, here: web.Response, path: str) -> web.Response:
    """`here`, and under `--workers N` the same action asked of every sibling worker."""
    cluster = cluster_of(request.app)
    if cluster is None:
        return here
    answers = await cluster.ask_peers("POST", path)
    body = json_body(here)
    workers = [{"pid": cluster.pid, "status": here.status, "answer": body}]
    status = here.status
    for peer in answers:
        workers.append({"pid": peer.pid, "status": peer.status or 504, "answer": peer.body})
        status = max(status, peer.status or 504)
    merged = {**body, "workers": workers} if isinstance(body, dict) else {"workers": workers}
    return web.json_response(merged, status=status, headers=_kept_headers(here))


def _kept_headers(response: web.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() == "www-authenticate"}
