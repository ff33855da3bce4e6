"""The circuit breaker that stops calling a plugin that keeps failing.

closed --(failure_threshold consecutive failures)--> open
open --(recovery_timeout_ms elapsed)--> half_open, which lets one probe call through
half_open --(probe succeeds)--> closed;  --(probe fails)--> open again

Only failures, timeouts and crashes count; a plugin's deliberate 4xx/5xx is a success
of the call. The breaker is used from the event-loop thread only, so it needs no lock.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class CircuitState(enum.Enum):
    """The breaker's three states (see the module's docstring)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One plugin's breaker; used from the event-loop thread only."""

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout_ms: int = 30_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            msg = f"failure_threshold must be >= 1 (got {failure_threshold})"
            raise ValueError(msg)
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout_ms / 1000
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> CircuitState:
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.recovery_timeout
        ):
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """Asks to make a call. In half-open only one probe at a time gets a yes.

        A yes must be followed by exactly one of record_success, record_failure or
        record_neutral.
        """
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        self._state = CircuitState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        probing = self._state is CircuitState.HALF_OPEN
        self._probe_in_flight = False
        if probing or self._failures >= self.failure_threshold:
            if self._state is not CircuitState.OPEN:
                self.times_opened += 1
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()

    def record_neutral(self) -> None:
        """The call never reached the plugin (e.g. no free slot): its outcome says nothing."""
        self._probe_in_flight = False
