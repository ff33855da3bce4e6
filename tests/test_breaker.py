from __future__ import annotations

from backworks.runtime.breaker import REFUSED, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def failed_call(breaker: CircuitBreaker) -> None:
    ticket = breaker.allow()
    assert ticket != REFUSED
    breaker.record_failure(ticket)


def opened(threshold: int = 1, recovery_ms: int = 500) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_threshold=threshold, recovery_timeout_ms=recovery_ms, clock=clock
    )
    for _ in range(threshold):
        failed_call(breaker)
    assert breaker.state.value == "open"
    return breaker, clock


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout_ms=1000, clock=FakeClock())
    for _ in range(2):
        failed_call(breaker)
    assert breaker.state.value == "closed"
    failed_call(breaker)
    assert breaker.state.value == "open"
    assert breaker.allow() == REFUSED


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout_ms=1000, clock=FakeClock())
    failed_call(breaker)
    breaker.record_success(breaker.allow())
    failed_call(breaker)
    assert breaker.state.value == "closed"


def test_half_open_after_recovery_timeout_lets_one_probe_through() -> None:
    breaker, clock = opened()
    clock.now += 0.499
    assert breaker.allow() == REFUSED
    clock.now += 0.002
    assert breaker.state.value == "half_open"
    assert breaker.allow() != REFUSED
    assert breaker.allow() == REFUSED, "a second caller must wait for the probe's outcome"


def test_probe_success_closes_and_probe_failure_reopens() -> None:
    breaker, clock = opened()
    clock.now += 1
    failed_call(breaker)
    assert breaker.state.value == "open"
    clock.now += 1
    breaker.record_success(breaker.allow())
    assert breaker.state.value == "closed"
    assert breaker.times_opened == 2


def test_neutral_outcome_frees_the_probe_without_deciding() -> None:
    breaker, clock = opened()
    clock.now += 1
    breaker.record_neutral(breaker.allow())
    assert breaker.state.value == "half_open"
    assert breaker.allow() != REFUSED


def test_a_late_success_of_an_earlier_call_does_not_close_an_open_breaker() -> None:
    """In OPEN only the probe moves the breaker: recovery_timeout_ms means what it says."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout_ms=30_000, clock=clock)
    slow = [breaker.allow() for _ in range(4)]  # admitted while closed, still running
    failed_call(breaker)
    failed_call(breaker)
    assert breaker.state.value == "open"
    for ticket in slow:
        breaker.record_success(ticket)  # they return late
    assert breaker.state.value == "open"
    clock.now += 29
    assert breaker.allow() == REFUSED
    clock.now += 1.5
    assert breaker.allow() != REFUSED, "the probe, after the whole recovery timeout"


def test_late_failures_of_earlier_calls_neither_reopen_nor_count_after_recovery() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout_ms=500, clock=clock)
    admitted = [breaker.allow() for _ in range(5)]
    failed_call(breaker)
    failed_call(breaker)
    clock.now += 1
    breaker.record_success(breaker.allow())  # the probe closes it
    assert breaker.state.value == "closed"
    for ticket in admitted:
        breaker.record_failure(ticket)  # from before it opened: they say nothing now
    assert breaker.state.value == "closed"
    assert breaker.consecutive_failures == 0


def test_a_neutral_call_in_the_closed_state_changes_nothing() -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout_ms=500, clock=FakeClock())
    failed_call(breaker)
    breaker.record_neutral(breaker.allow())
    assert breaker.consecutive_failures == 1
    failed_call(breaker)
    assert breaker.state.value == "open"


def test_reset_closes_an_open_breaker_and_forgets_its_failures() -> None:
    breaker, _ = opened(threshold=3)
    breaker.reset()
    assert breaker.state.value == "closed"
    assert breaker.consecutive_failures == 0
    assert breaker.allow() != REFUSED


def test_many_concurrent_probes_are_one() -> None:
    """Under concurrency: while the probe runs every other caller is refused; its outcome
    decides, and calls admitted in the half-open state are only ever that probe."""
    breaker, clock = opened()
    clock.now += 1
    tickets = [breaker.allow() for _ in range(100)]
    admitted = [t for t in tickets if t != REFUSED]
    assert len(admitted) == 1
    breaker.record_failure(admitted[0])
    assert breaker.state.value == "open"
    assert breaker.times_opened == 2


def calm_matches(breaker: CircuitBreaker) -> bool:
    """The word the compiled step reads says exactly: closed, no failure counted."""
    closed_and_clean = breaker.state.value == "closed" and breaker.consecutive_failures == 0
    return breaker.calm[0] == (1 if closed_and_clean else 0)


def test_the_calm_word_follows_every_transition() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout_ms=500, clock=clock)
    assert calm_matches(breaker)
    assert breaker.calm[0] == 1
    failed_call(breaker)  # one failure: closed, but not calm
    assert calm_matches(breaker)
    assert breaker.calm[0] == 0
    breaker.record_success(breaker.allow())  # forgotten
    assert calm_matches(breaker)
    assert breaker.calm[0] == 1
    late = breaker.allow()
    failed_call(breaker)
    failed_call(breaker)  # open
    assert calm_matches(breaker)
    breaker.record_success(late)  # a late success of the old period changes nothing
    assert calm_matches(breaker)
    assert breaker.calm[0] == 0
    clock.now += 0.5
    probe = breaker.allow()  # half-open
    assert calm_matches(breaker)
    breaker.record_failure(probe)  # open again
    assert calm_matches(breaker)
    clock.now += 0.5
    breaker.record_success(breaker.allow())  # the probe closes it
    assert calm_matches(breaker)
    assert breaker.calm[0] == 1
    failed_call(breaker)
    breaker.reset()
    assert calm_matches(breaker)
    assert breaker.calm[0] == 1
    failed_call(breaker)
    failed_call(breaker)
    breaker.reset()  # from open
    assert calm_matches(breaker)
    assert breaker.calm[0] == 1
