from __future__ import annotations

from backworks.runtime.breaker import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout_ms=1000, clock=FakeClock())
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state.value == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state.value == "open"
    assert not breaker.allow()


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_timeout_ms=1000, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state.value == "closed"


def test_half_open_after_recovery_timeout_lets_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout_ms=500, clock=clock)
    breaker.record_failure()
    clock.now += 0.499
    assert not breaker.allow()
    clock.now += 0.002
    assert breaker.state.value == "half_open"
    assert breaker.allow()
    assert not breaker.allow(), "a second caller must wait for the probe's outcome"


def test_probe_success_closes_and_probe_failure_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout_ms=500, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state.value == "open"
    clock.now += 1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state.value == "closed"
    assert breaker.times_opened == 2


def test_neutral_outcome_frees_the_probe_without_deciding() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout_ms=500, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.record_neutral()
    assert breaker.state.value == "half_open"
    assert breaker.allow()
