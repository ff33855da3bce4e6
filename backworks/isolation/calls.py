"""A call to a worker as the host holds it, and what becomes of calls lost with one.

When a worker dies, `sort_out_lost` decides for each call it held (backend.py has the
whole story):

- a call running at the death gets a strike; with POISON_STRIKES it is the culprit,
  a poison request: answered (PluginCrashedError), logged with its request id, never
  tried again;
- a call that had returned in the worker, its answer made but not yet written
  (answers leave in batches), ran but did not crash anything: no strike; it is sent
  again when it is safe to run twice, else answered PluginOutcomeUnknownError;
- a call that had not started, or is safe to run twice (GET, HEAD, `retry_on_crash`),
  is sent again; one with a strike is a suspect, and runs alone when it is;
- any other call ran and may not be repeated (a POST): when it ran alone at a death
  the host did not cause, it is the culprit and answered PluginCrashedError; when
  others ran beside it, or the host stopped the worker for another call's sake, it
  may or may not have taken effect and is answered PluginOutcomeUnknownError (its
  own code, with Retry-After: the client decides, e.g. with an idempotency key).

A death counts once on the breaker: of the calls it fails, only the first (a culprit
if there is one) has `counted` set. A worker the host stopped on purpose marks no
call, and its calls are never counted: the reason was counted already (a timeout, a
CPU overrun) or was not the plugin's fault (shutdown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import structlog

from backworks.abi import Response
from backworks.errors import (
    PluginCrashedError,
    PluginError,
    PluginOutcomeUnknownError,
    PluginTimeoutError,
)

if TYPE_CHECKING:
    from backworks.isolation.supervisor import Slot

log = structlog.get_logger("backworks.isolation")

# Methods whose request may be sent again after a crash without asking the plugin.
IDEMPOTENT = frozenset({"GET", "HEAD"})
POISON_STRIKES = 2  # worker deaths a call was running at that make it the culprit


class Group:
    """One call made on every worker's state (health, shutdown), answered as one."""

    __slots__ = ("combine", "error", "future", "left", "results")

    def __init__(
        self,
        future: asyncio.Future[Any],
        parts: int,
        combine: Callable[[list[Response]], Response | None],
    ) -> None:
        self.future = future
        self.left = parts
        self.combine = combine
        self.results: list[Response] = []
        self.error: BaseException | None = None

    def part_done(self, result: Response | None, error: BaseException | None) -> None:
        self.left -= 1
        if error is not None:
            self.error = self.error or error
        elif result is not None:
            self.results.append(result)
        if self.left == 0 and not self.future.done():
            if self.error is not None:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(self.combine(self.results))


class Call:
    """One call sent (or to be sent) to a worker, until it is answered."""

    __slots__ = (
        "abandoned",
        "call_id",
        "cpu_used_ms",
        "frame",
        "future",
        "group",
        "request_id",
        "retryable",
        "slot",
        "strikes",
    )

    def __init__(
        self,
        call_id: int,
        frame: bytes,
        future: asyncio.Future[Any] | None,
        group: Group | None = None,
        *,
        request_id: str = "",
        retryable: bool = False,
    ) -> None:
        self.call_id = call_id
        self.frame = frame  # kept until answered: a lost call may be sent again
        self.future = future
        self.group = group
        self.request_id = request_id
        self.retryable = retryable  # safe to run twice (idempotent or retry_on_crash)
        self.slot: Slot | None = None
        self.abandoned = False
        self.cpu_used_ms: int | None = None
        self.strikes = 0  # worker deaths this call was running at


def worst_health(reports: list[Response]) -> Response | None:
    """The least healthy report of all workers: 503 (or anything odd) > 429 > 200."""

    def severity(r: Response) -> int:
        return 0 if r.status == 200 else 1 if r.status == 429 else 2

    return max(reports, key=severity, default=None)


def sort_out_lost(
    calls: Iterable[Call],
    *,
    plugin: str,
    exit_text: str,
    stop_reason: str | None,
    started: frozenset[int],
    give_up: bool,
    unsent: frozenset[int] = frozenset(),
) -> tuple[list[tuple[Call, PluginError]], list[Call]]:
    """The calls lost with a worker: those answered now (with their error), those sent again.

    `started`: ids of the calls the worker had begun; `unsent`: those of them that had
    returned, their answers not written; `stop_reason`: set when the host stopped the
    worker; `give_up`: nothing is sent again (the plugin is closing or failed).
    """
    lost = list(calls)
    running = started - unsent
    if stop_reason is None:  # a death the host did not cause: marks the calls it was running
        for call in lost:
            if call.call_id in running:
                call.strikes += 1
    # Culprits first, so the one failure this death counts for is theirs.
    lost.sort(key=lambda c: c.strikes < POISON_STRIKES)
    text = exit_text if stop_reason is None else f"{exit_text}: stopped because {stop_reason}"
    counted = stop_reason is None
    # The one call running at a death nobody caused is that death's culprit.
    ran = [c for c in lost if c.call_id in running and c.group is None]
    alone = stop_reason is None and len(ran) == 1
    answered: list[tuple[Call, PluginError]] = []
    again: list[Call] = []
    for call in lost:
        if call.abandoned:  # nobody waits for it: the runner answered a timeout
            error: PluginError = PluginTimeoutError(
                plugin, f"the call ignored cancellation and was stopped: {exit_text}"
            )
        elif call.group is not None or call.cpu_used_ms is not None:
            error = PluginCrashedError(plugin, text, counted=False)
        elif call.strikes >= POISON_STRIKES:
            log.error(
                "plugin_poison_request",
                plugin=plugin,
                request_id=call.request_id,
                worker_deaths=call.strikes,
                exit=exit_text,
                reason="the request was running at each death; it is not tried again",
            )
            msg = f"{text}; this request crashed a worker {call.strikes} times"
            error = PluginCrashedError(plugin, msg, counted=counted)
            counted = False
        elif not give_up and (call.retryable or call.call_id not in started):
            again.append(call)
            continue
        elif call.call_id in unsent:
            msg = f"{text}; the call had run, its answer was lost with the worker"
            error = PluginOutcomeUnknownError(plugin, msg, counted=counted)
            counted = False
        elif call.call_id in started and not alone:
            msg = f"{text}; the call was running beside others, its outcome is unknown"
            error = PluginOutcomeUnknownError(plugin, msg, counted=counted)
            counted = False
        else:
            error = PluginCrashedError(plugin, text, counted=counted)
            counted = False
        answered.append((call, error))
    return answered, again
