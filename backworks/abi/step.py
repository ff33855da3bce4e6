"""The compiled step: one inline plugin call, from the request's fields to the answer's bytes.

`backworks.abi._step` is built from step.c by the project's build (cffi API mode,
hatch_build.py). For one request it lays out the `bw_request`, calls `handle`, checks
the answer as marshal.py does, renders the whole HTTP answer as the lane's
wire.render does, and releases the plugin's memory once: one C call where the
Python path makes a dozen small steps. What it does not render itself (a failed
call, an answer the checks refuse, a rare shape) it leaves unreleased in the
thread's scratch response, and the Python path below takes it from there: the
plugin is called once either way, and its answer released once.

The step admits a call itself, without Python, when the runner's gate has a free
slot and its breaker is closed with no failure counted: it reads the words those two
keep (runtime/gate.py's CallGate.words, runtime/breaker.py's CircuitBreaker.calm).
Otherwise it declines, calling nothing, and the runner admits the call in Python.

The step is used when the extension is there, unless BACKWORKS_COMPILED_STEP=0
(the pure-Python path then serves every request; tests run both and compare).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from itertools import chain
from typing import Any, NamedTuple

from backworks import httpspec
from backworks.abi.declarations import BW_OK, ffi
from backworks.abi.marshal import _scratch, take_answer
from backworks.abi.native import NativeInstance
from backworks.abi.values import CancelFlag, Request, Response

try:
    from backworks.abi import _step  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the pure-Python path serves
    _step = None

ENV = "BACKWORKS_COMPILED_STEP"


def available() -> bool:
    """Whether the extension was built for this interpreter."""
    return _step is not None


def enabled() -> bool:
    """Whether requests go through the compiled step (read when a plugin starts)."""
    return _step is not None and os.environ.get(ENV, "1").lower() not in ("0", "off", "false")


class Wire(NamedTuple):
    """An answer rendered to the wire by the compiled step: its status and its bytes."""

    status: int
    data: bytes
    overran: bool  # the call took longer than the inline budget


_configured: list[Any] = []  # what the C side points into, alive for the process


def _configure(bounds: Sequence[float]) -> bool:
    """Hands the C side the reason phrases and the latency buckets, once; False when it
    cannot count by these buckets (then the step is not used)."""
    if _step is None:
        return False
    if _configured:
        return bool(_configured[0])
    bounds_c = _step.ffi.new("double[]", list(bounds))
    fits = _step.lib.bws_set_bounds(bounds_c, len(bounds)) == 0
    _configured.extend((fits, bounds_c))
    if not fits:  # tests/test_compiled_step.py sees the step unused, and fails
        return False
    for status in range(200, 600):
        phrase = httpspec.reason(status).encode()
        _configured.append(phrase)
        _step.lib.bws_set_reason(status, phrase, len(phrase))
    return True


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


class CompiledStep:
    """The compiled step for one plugin instance's inline calls (loop thread only)."""

    def __init__(
        self,
        instance: NativeInstance,
        cancel: CancelFlag,
        budget_s: float,
        bounds: Sequence[float],
        gate: array[int],
        calm: array[int],
    ) -> None:
        """`gate` and `calm`: the int64 words of the runner's CallGate and breaker
        (see the module's docstring), read by the step at every call."""
        assert _step is not None
        _configure(bounds)
        self._instance = instance  # holds the library, the state and the descriptor
        self._cancel = cancel
        self._bounds = tuple(bounds)
        sffi = _step.ffi
        plugin = self._plugin = sffi.new("bws_plugin *")
        plugin.desc = sffi.cast("void *", _address(instance._desc))
        plugin.state = sffi.cast("void *", _address(instance._state))
        plugin.cancelled = sffi.cast("uint32_t *", cancel.address)
        # Held here: their buffers stay exported (the arrays cannot move) while we live.
        self._words = sffi.from_buffer("int64_t[]", gate), sffi.from_buffer("int64_t[]", calm)
        plugin.gate, plugin.calm = self._words
        plugin.limit = instance.max_response_bytes
        plugin.budget = budget_s
        self._run = _step.lib.bws_step
        self._last_rc = _step.lib.bws_last_rc

    @property
    def last_seconds(self) -> float:
        """How long the last call took in `handle`."""
        return float(self._plugin.last)

    @property
    def total(self) -> int:
        """Every call of `handle` the step made (rendered or not); never reset."""
        return int(self._plugin.total)

    def call(
        self,
        req: Request,
        date: bytes,
        global_block: bytes,
        connection: bytes,
        head_only: bool,
    ) -> Wire | Response | None:
        """The answer to `req` as wire bytes, or as a Response the Python path copied;
        None when the plugin was not called (not admitted here: see the module's
        docstring; or a request the step does not lay out): the caller's Python path
        admits and makes the call then.

        Raises what NativeInstance.handle raises, once the plugin was called.
        """
        instance = self._instance
        if instance._closed:  # the Python path says so, with its ticket
            return None
        params, headers = req.params, req.headers
        joined = "\0".join(
            (
                req.method,
                req.path,
                req.query,
                req.endpoint,
                req.request_id,
                *chain.from_iterable(params),
                *chain.from_iterable(headers),
            )
        )
        try:
            texts = joined.encode("ascii")
        except UnicodeEncodeError:
            texts = joined.encode("utf-8", "surrogateescape")
        body = req.body
        scratch = _scratch(0)
        made = self._run(
            self._plugin,
            texts,
            len(texts),
            len(params),
            len(headers),
            body,
            len(body),
            min(max(req.timeout_ms, 0), 0xFFFFFFFF),
            date,
            global_block,
            connection,
            head_only,
            scratch.c_response,
            scratch.cdata,
            scratch.size,
        )
        if made >= 0:
            return Wire(made & 1023, scratch.out[: made >> 11].tobytes(), bool(made & 1024))
        if made == _step.lib.BWS_NOT_CALLED:
            return None
        # Called, and left for the Python path: its checks, its copy, its release.
        rc = self._last_rc()
        if rc != BW_OK:
            instance._check(rc, scratch.c_response, "handle")
        return take_answer(scratch, instance.info.name, instance.max_response_bytes)

    @property
    def pending(self) -> int:
        """Rendered calls counted in C and not taken yet (take_counts)."""
        return int(self._plugin.calls)

    def take_counts(self) -> tuple[int, list[int], float, list[float]]:
        """The rendered calls counted since the last take: calls, buckets, sum, samples
        (oldest first), and the C counters start again from zero."""
        p = self._plugin
        calls = int(p.calls)
        if not calls:
            return 0, [], 0.0, []
        unpack = _step.ffi.unpack
        buckets: list[int] = unpack(p.buckets, len(self._bounds) + 1)
        filled, cursor = int(p.filled), int(p.cursor)
        ring: list[float] = unpack(p.samples, filled)
        samples = ring[cursor:] + ring[:cursor] if filled == len(p.samples) else ring
        total = float(p.sum)
        p.calls = 0
        p.sum = 0.0
        p.cursor = p.filled = 0
        _step.ffi.memmove(p.buckets, bytes(8 * len(buckets)), 8 * len(buckets))
        return calls, buckets, total, samples


def compiled_step(
    calls: object,
    cancel: CancelFlag,
    budget_s: float,
    bounds: Sequence[float],
    gate: array[int],
    calm: array[int],
) -> CompiledStep | None:
    """The compiled step for `calls`, when it is an ABI 1 instance and the step is on."""
    if not enabled() or not isinstance(calls, NativeInstance) or not _configure(bounds):
        return None
    return CompiledStep(calls, cancel, budget_s, bounds, gate, calm)
