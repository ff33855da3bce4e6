"""What an endpoint does with a request: a plugin call wrapped in hooks, or a static answer."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Protocol

import attrs
import structlog
from aiohttp import web
from multidict import CIMultiDict

from backworks.abi import Request, Response
from backworks.errors import PluginCallError, PluginError, PluginUnavailableError
from backworks.http.keys import PLUGIN, REQUEST_ID
from backworks.lifecycle.routes import DEFAULT_CONTENT_TYPE, PluginEndpoint, StaticEndpoint
from backworks.runtime.runner import PluginRunner

log = structlog.get_logger("backworks.endpoints")

# Headers a plugin may not set: aiohttp computes them from the body and the connection.
_RESERVED_HEADERS = frozenset(
    {"content-length", "content-type", "transfer-encoding", "connection", "keep-alive"}
)


class Plugins(Protocol):
    """How endpoints find the runner of a plugin (the Host)."""

    def runner(self, name: str) -> PluginRunner: ...
    def is_critical(self, name: str) -> bool: ...


def answer_static(endpoint: StaticEndpoint, request: web.Request) -> web.Response:
    """A static endpoint's answer, with `{{now}}` and `{{request_id}}` filled in."""
    body = endpoint.body
    if "{{" in body:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        body = body.replace("{{now}}", now.replace("+00:00", "Z"))
        body = body.replace("{{request_id}}", request[REQUEST_ID])
    response = web.Response(status=endpoint.status, body=body.encode(), headers=endpoint.headers)
    response.headers["Content-Type"] = endpoint.content_type
    return response


async def plugin_request(
    request: web.Request, pattern: str, params: tuple[tuple[str, str], ...], timeout_ms: int
) -> Request:
    """Maps an HTTP request onto the ABI's `bw_request`."""
    return Request(
        method=request.method,
        path=request.path,
        # From the request line itself: yarl re-quotes the query (%2F becomes /).
        query=request.raw_path.partition("?")[2],
        endpoint=pattern,
        params=params,
        headers=tuple((name.lower(), value) for name, value in request.headers.items()),
        body=await request.read(),
        request_id=request[REQUEST_ID],
        timeout_ms=timeout_ms,
    )


def to_web_response(resp: Response, plugin: str) -> web.Response:
    """Copies a plugin's answer into an aiohttp response, refusing what HTTP cannot carry."""
    if not 100 <= resp.status <= 599:
        raise PluginCallError(plugin, f"returned HTTP status {resp.status}, not 100-599")
    content_type = resp.content_type or DEFAULT_CONTENT_TYPE
    if not resp.headers:
        return web.Response(
            status=resp.status, body=resp.body, headers={"Content-Type": content_type}
        )
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in resp.headers:
        if name.lower() in _RESERVED_HEADERS or not _header_ok(name, value):
            log.warning("plugin_header_dropped", plugin=plugin, header=name)
            continue
        headers.add(name, value)
    headers["Content-Type"] = content_type
    return web.Response(status=resp.status, body=resp.body, headers=headers)


def _header_ok(name: str, value: str) -> bool:
    return (
        bool(name)
        and name.isascii()
        and not any(c in name for c in " :\r\n\t")
        and not any(c in value for c in "\r\n\0")
    )


async def answer_plugin(
    plugins: Plugins,
    endpoint: PluginEndpoint,
    request: web.Request,
    params: tuple[tuple[str, str], ...],
    global_hooks: Sequence[str] = (),
) -> web.Response:
    """Request hooks in order, then the handler, then response hooks in reverse."""
    request[PLUGIN] = endpoint.handler
    runner = plugins.runner(endpoint.handler)
    req = await plugin_request(request, endpoint.pattern, params, runner.timeout_ms)
    hooks = [*global_hooks, *endpoint.hooks]
    entered: list[str] = []
    resp: Response | None = None
    for name in hooks:
        early = await _request_hook(plugins, name, req)
        if early is not None:
            resp, request[PLUGIN] = early, name
            break
        entered.append(name)
    if resp is None:
        # Looked up again, with no await before the call: a reload may have replaced
        # the runner while the body was read or the hooks ran, and a replaced runner
        # takes no new calls (it is draining towards its `shutdown`).
        runner = plugins.runner(endpoint.handler)
        resp = await runner.handle(_with_timeout(req, runner.timeout_ms))
    for name in reversed(entered):
        resp = await _response_hook(plugins, name, req, resp)
    return to_web_response(resp, request[PLUGIN])


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
    return req if req.timeout_ms == timeout_ms else attrs.evolve(req, timeout_ms=timeout_ms)


def _hook_failed(plugins: Plugins, name: str, hook: str, error: PluginError, req: Request) -> None:
    """A critical hook fails closed (503); any other is skipped with a warning."""
    if plugins.is_critical(name):
        msg = f"critical hook {hook} failed, so the request is refused: {error.message}"
        raise PluginUnavailableError(name, msg) from error
    log.warning(
        "hook_skipped", plugin=name, hook=hook, error=error.message, request_id=req.request_id
    )
