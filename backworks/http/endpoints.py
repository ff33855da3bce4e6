"""What an endpoint does with a request: a plugin call wrapped in hooks, or a static answer.

Engine-neutral: both HTTP engines hand an `Exchange` in and write the `Response` that
comes out (http/reply.py). Plugin errors propagate as PluginError; answer.py turns
them into the error envelope.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Protocol

import structlog

from backworks.abi import Request, Response
from backworks.errors import PluginError, PluginUnavailableError
from backworks.http.exchange import Exchange
from backworks.lifecycle.routes import PluginEndpoint, StaticEndpoint
from backworks.runtime.runner import PluginRunner

log = structlog.get_logger("backworks.endpoints")

Params = tuple[tuple[str, str], ...]


class Plugins(Protocol):
    """How endpoints find the runner of a plugin (the Host)."""

    def runner(self, name: str) -> PluginRunner: ...
    def is_critical(self, name: str) -> bool: ...


def answer_static(endpoint: StaticEndpoint, request_id: str) -> Response:
    """A static endpoint's answer, with `{{now}}` and `{{request_id}}` filled in."""
    if endpoint.fixed is not None:
        return endpoint.fixed
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    body = endpoint.body.replace("{{now}}", now.replace("+00:00", "Z"))
    body = body.replace("{{request_id}}", request_id)
    return Response(endpoint.status, body.encode(), endpoint.content_type, endpoint.headers)


def plugin_request(
    ex: Exchange, endpoint: PluginEndpoint, params: Params, timeout_ms: int
) -> Request:
    """What the plugin is handed for `ex`: its fields, the route's pattern and parameters."""
    return Request(
        ex.method,
        ex.path,
        ex.query,
        endpoint.pattern,
        params,
        ex.headers,
        ex.body,
        ex.request_id,
        timeout_ms,
    )


async def answer_plugin(
    plugins: Plugins,
    endpoint: PluginEndpoint,
    ex: Exchange,
    params: Params,
    global_hooks: Sequence[str] = (),
) -> Response:
    """Request hooks in order, then the handler, then response hooks in reverse."""
    ex.plugin = handler = endpoint.handler
    runner = plugins.runner(handler)
    req = plugin_request(ex, endpoint, params, runner.timeout_ms)
    hooks = (*global_hooks, *endpoint.hooks) if endpoint.hooks else global_hooks
    if not hooks:
        return await runner.handle(req)
    entered: list[str] = []
    resp: Response | None = None
    for name in hooks:
        early = await _request_hook(plugins, name, req)
        if early is not None:
            resp, ex.plugin = early, name
            break
        entered.append(name)
    if resp is None:
        # Looked up again, with no await before the call: a reload may have replaced
        # the runner while the hooks ran, and a replaced runner takes no new calls (it
        # is draining towards its `shutdown`).
        runner = plugins.runner(handler)
        resp = await runner.handle(_with_timeout(req, runner.timeout_ms))
    for name in reversed(entered):
        resp = await _response_hook(plugins, name, req, resp)
    return resp


async def _request_hook(plugins: Plugins, name: str, req: Request) -> Response | None:
    try:
        runner = plugins.runner(name)
        if not runner.info.has_on_request:
            return None
        return await runner.on_request(_with_timeout(req, runner.timeout_ms))
    except PluginError as e:
        _hook_failed(plugins, name, "on_request", e, req)
        return None


async def _response_hook(plugins: Plugins, name: str, req: Request, upstream: Response) -> Response:
    try:
        runner = plugins.runner(name)
        if not runner.info.has_on_response:
            return upstream
        replaced = await runner.on_response(_with_timeout(req, runner.timeout_ms), upstream)
    except PluginError as e:
        _hook_failed(plugins, name, "on_response", e, req)
        return upstream
    return upstream if replaced is None else replaced


def _with_timeout(req: Request, timeout_ms: int) -> Request:
    """The request as one hook sees it: its own plugin's budget."""
    return req if req.timeout_ms == timeout_ms else req._replace(timeout_ms=timeout_ms)


def _hook_failed(plugins: Plugins, name: str, hook: str, error: PluginError, req: Request) -> None:
    """A critical hook fails closed (503); any other is skipped with a warning.

    The hook's own reason goes to the log; the client gets the fixed message.
    """
    critical = plugins.is_critical(name)
    log.warning(
        "hook_failed" if critical else "hook_skipped",
        plugin=name,
        hook=hook,
        error=error.message,
        request_id=req.request_id,
    )
    if critical:
        msg = f"critical hook {hook} failed, so the request is refused: {error.message}"
        raise PluginUnavailableError(name, msg) from error
