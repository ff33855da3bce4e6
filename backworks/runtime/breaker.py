"""The circuit breaker that stops calling a plugin that keeps failing.

closed --(failure_threshold consecutive failures)--> open
open --(recovery_timeout_ms elapsed)--> half_open, which lets one probe call through
half_open --(probe succeeds)--> closed;  --(probe fails)--> open again

Only failures, timeouts and crashes count; a plugin's deliberate 4xx/5xx is a success
of the call. The breaker keeps its word: each admitted call gets a ticket, and an
outcome only moves the breaker in the state its ticket was issued for. In open and
half-open only the probe's outcome counts; a call admitted while the breaker was
still closed that ends late (a success or a failure) changes nothing, so a
recovery_timeout of 30 s means 30 s. Every admitted call records exactly one
outcome: success, failure, or neutral (it said nothing about the plugin: the caller
went away, or the host itself failed around the call).

Used from the event-loop thread only, so it needs no lock.

`calm` is a machine word the compiled step (abi/step.c) reads without Python: 1 while
the breaker is closed with no failure counted. Then a call's ticket is the closed
period's number, which allow() hands out without changing anything, and its success
records nothing (the failures are already 0), so a step call that succeeds needs no
ticket at all: only a call that fails or is unusual goes back to Python, which takes
the same ticket then (nothing can have moved the breaker in between: the call ran
within one C call on the loop thread). Every change of state or of the failure count
below sets the word.
"""

from __future__ import annotations

import enum
import time
from array import array
from collections.abc import Callable


class CircuitState(enum.Enum):
    """The breaker's three states (see the module's docstring)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# allow()'s answer when the call may not be made; every other ticket is true.
REFUSED = 0


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
        # Tickets: the closed period a call was admitted in (a positive number that
        # grows each time the breaker opens), or its negative for the half-open probe.
        self._period = 1
        self.times_opened = 0
        self.calm = array("q", (1,))  # see the module's docstring

    @property
    def state(self) -> CircuitState:
        """The state now (an open breaker past its recovery timeout is half-open)."""
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.recovery_timeout
        ):
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row of calls admitted while closed."""
        return self._failures

    def allow(self) -> int:
        """Asks to make a call: a ticket, or REFUSED (0). In half-open, one probe at a time.

        Pass the ticket to exactly one of record_success, record_failure or
        record_neutral when the call's outcome is known.
        """
        if self._state is CircuitState.CLOSED:
            return self._period
        if self.state is CircuitState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return -self._period
        return REFUSED

    def record_success(self, ticket: int) -> None:
        """The call worked: a closed breaker forgets its failures; a probe closes it."""
        if ticket == self._period and self._state is CircuitState.CLOSED:
            if self._failures:
                self._failures = 0
                self.calm[0] = 1
        elif ticket == -self._period and self._state is CircuitState.HALF_OPEN:
            self._close()

    def record_failure(self, ticket: int) -> None:
        """The call failed, timed out or crashed."""
        if ticket == self._period and self._state is CircuitState.CLOSED:
            self._failures += 1
            self.calm[0] = 0
            if self._failures >= self.failure_threshold:
                self._open()
        elif ticket == -self._period and self._state is CircuitState.HALF_OPEN:
            self._open()

    def record_neutral(self, ticket: int) -> None:
        """The call says nothing about the plugin; a neutral probe lets another one try."""
        if ticket == -self._period and self._state is CircuitState.HALF_OPEN:
            self._probe_in_flight = False

    def reset(self) -> None:
        """Closes the breaker now (an operator fixed the cause); its failures are forgotten."""
        if self._state is not CircuitState.CLOSED:
            self._close()
        self._failures = 0
        self.calm[0] = 1

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self.calm[0] = 0
        self._opened_at = self._clock()
        self._probe_in_flight = False
        self._period += 1  # calls admitted before this no longer count
        self.times_opened += 1

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._failures = 0
        self.calm[0] = 1
        self._probe_in_flight = False
        self._period += 1  # the probe's period is over; closed calls get a new one
