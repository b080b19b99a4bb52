from aragog_jax.serving import BreakerState, CircuitBreaker


def test_opens_after_threshold_and_half_opens_after_cooldown():
    b = CircuitBreaker(failure_threshold=2, cooldown_s=1.0, max_cooldown_s=4.0)
    assert b.slots(0.0) is None
    assert not b.on_failure(0.0, "x")
    assert b.on_failure(0.1, "y")
    assert b.poll(0.5) is BreakerState.OPEN and b.slots(0.5) == 0
    assert b.poll(1.2) is BreakerState.HALF_OPEN
    assert b.slots(1.2) == 1
    b.on_dispatch(1.2)
    assert b.slots(1.2) == 0  # one probe at a time


def test_half_open_failure_doubles_cooldown_success_closes():
    b = CircuitBreaker(failure_threshold=1, cooldown_s=1.0, max_cooldown_s=3.0)
    b.on_failure(0.0)
    assert b.poll(1.0) is BreakerState.HALF_OPEN
    assert b.on_failure(1.0)
    assert b.current_cooldown_s == 2.0
    assert b.poll(2.9) is BreakerState.OPEN
    assert b.poll(3.0) is BreakerState.HALF_OPEN
    b.on_failure(3.0)
    assert b.current_cooldown_s == 3.0  # capped
    assert b.on_success(6.0)  # half-open probe succeeded: recovered
    assert b.state is BreakerState.CLOSED and b.current_cooldown_s == 1.0 and b.num_opened == 3


def test_success_while_open_does_not_close():
    b = CircuitBreaker(cooldown_s=5.0)
    b.on_failure(0.0)
    assert not b.on_success(1.0)
    assert b.poll(1.0) is BreakerState.OPEN
