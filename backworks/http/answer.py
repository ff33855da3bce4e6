"""The one entry of the request core: the answer to an Exchange, now or to await.

`answer` resolves the endpoint and, for a plugin, its Request and runner once; what
it returns is the answer itself when making it needs no waiting (routing errors,
static endpoints, an inline plugin call with no hook around it: the hot path), else
a coroutine that finishes the same work. No engine redoes a step when a call has to
wait. Every PluginError becomes the error envelope here (reply.py), logged with the
request id; the client only ever gets the fixed message.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, overload

import structlog

from backworks.abi import Response
from backworks.abi.step import Wire
from backworks.errors import PluginCallError, PluginCancelledError, PluginCrashedError, PluginError
from backworks.http.endpoints import answer_plugin, answer_static, plugin_request
from backworks.http.exchange import Exchange
from backworks.http.reply import error_reply, plugin_error_reply
from backworks.http.routing import route
from backworks.lifecycle.host import Host
from backworks.lifecycle.routes import Match, MountedEndpoint, PluginEndpoint, StaticEndpoint
from backworks.runtime.pooled import PooledCall

log = structlog.get_logger("backworks.server")

Answer = Response | Coroutine[Any, Any, Response]

# What the lane's answer bytes need beside the answer: the Date, the global headers'
# block, the Connection field, and whether the request was a HEAD (wire.render).
WireFields = tuple[bytes, bytes, bytes, bool]

# Given the answer of a pooled call handed to the threads (a PooledCall); None: the call
# was cancelled (its caller went away).
Done = Callable[[Response | None], None]


@overload
def answer(
    host: Host, ex: Exchange, match: Match[Any] | Response | None = None, wire: None = None
) -> Answer: ...
@overload
def answer(
    host: Host,
    ex: Exchange,
    match: Match[Any] | Response | None,
    wire: Callable[[], WireFields],
    done: Done | None = None,
) -> Answer | Wire | PooledCall: ...
def answer(
    host: Host,
    ex: Exchange,
    match: Match[Any] | Response | None = None,
    wire: Callable[[], WireFields] | None = None,
    done: Done | None = None,
) -> Answer | Wire | PooledCall:
    """The answer to `ex`, or a coroutine that makes it (never raises a PluginError).

    `match`: the result of `route(host, ex)` when the caller already has it. `wire`:
    the caller writes answers as lane/wire.py renders them, with the fields this gives
    (asked only for an inline plugin call, which may then answer with the rendered
    bytes: a Wire). `done`: the
    caller takes a pooled call's answer by callback: such a call (no hook around it)
    is handed to the plugin's threads and returned as a PooledCall, to cancel if the
    client goes away, and its answer (the error envelope for a failure) goes to
    `done` (runtime/pooled.py).
    """
    if match is None:
        match = route(host, ex)
    if isinstance(match, Response):
        return match
    target = match.route.target
    if isinstance(target, StaticEndpoint):
        return answer_static(target, ex.request_id)
    params = match.params
    if isinstance(target, MountedEndpoint):
        name = params[0][1]
        if name not in host.plugins:
            return error_reply(404, ex.request_id)
        target = PluginEndpoint(target.pattern, name)
    try:
        if target.hooks or host.config.hooks:
            return _settled(answer_plugin(host, target, ex, params, host.config.hooks), ex)
        ex.plugin = target.handler
        runner = host.runner(target.handler)
        req = plugin_request(ex, target, params, runner.timeout_ms)
        made: Answer | Wire | PooledCall
        if done is not None and runner.hands_off:
            made = runner.submit(req, _settler(ex, done))
        elif wire is None:
            made = runner.call(req)
        else:
            made = runner.call_wire(req, *wire())
    except PluginError as e:
        return failed(e, ex)
    return made if isinstance(made, Response | Wire | PooledCall) else _settled(made, ex)


def _settler(ex: Exchange, done: Done) -> Callable[[Response | None, BaseException | None], None]:
    """A pooled call's outcome made the answer `_settled` would have made of it."""

    def settle(resp: Response | None, error: BaseException | None) -> None:
        if error is None:
            done(resp)
        elif isinstance(error, PluginError):
            done(failed(error, ex))
        else:  # the host failed around the call: ours to log, 500 to the client
            log.error("request_failed", request_id=ex.request_id, exc_info=error)
            done(error_reply(500, ex.request_id))

    return settle


async def answered(
    host: Host, ex: Exchange, match: Match[Any] | Response | None = None
) -> Response:
    """`answer`, awaited: for callers that are coroutines anyway (aiohttp's handler)."""
    made = answer(host, ex, match)
    return made if isinstance(made, Response) else await made


async def _settled(coro: Coroutine[Any, Any, Response], ex: Exchange) -> Response:
    try:
        return await coro
    except PluginError as e:
        return failed(e, ex)


def failed(error: PluginError, ex: Exchange) -> Response:
    """The envelope for a failed plugin call; its reason goes to the log only."""
    if isinstance(error, PluginCallError | PluginCancelledError | PluginCrashedError):
        log.warning(
            "plugin_failed", plugin=error.plugin, request_id=ex.request_id, error=error.message
        )
    return plugin_error_reply(error, ex.request_id)
