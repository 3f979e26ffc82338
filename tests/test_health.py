"""The circuit breaker per upstream: closed, open, half-open, and back."""

from __future__ import annotations

import pytest

from relay.core.health import Circuit, CircuitState, HealthPolicy

POLICY = HealthPolicy(failure_threshold=3, cooldown_seconds=60.0)
T0 = 1_000.0


def failed_times(circuit: Circuit, times: int, start: float = T0) -> Circuit:
    """``times`` failures, one second apart from ``start``."""
    for i in range(times):
        circuit = circuit.failed(POLICY, start + i, f"error {i + 1}")
    return circuit


def opened_at(now: float) -> Circuit:
    return Circuit(CircuitState.OPEN, POLICY.failure_threshold, now, "connect: refused")


def test_default_policy_and_circuit() -> None:
    assert HealthPolicy() == HealthPolicy(failure_threshold=5, cooldown_seconds=60.0)
    circuit = Circuit()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures == 0
    assert circuit.admits(POLICY, 0.0)
    assert circuit.reopens_at(POLICY, T0) is None


@pytest.mark.parametrize("failures", [1, 2])
def test_closed_counts_consecutive_failures_below_threshold(failures: int) -> None:
    circuit = failed_times(Circuit(), failures)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures == failures
    assert circuit.last_error == f"error {failures}"
    assert circuit.changed_at == 0.0  # counting failures does not change the state
    assert circuit.admits(POLICY, T0 + 10)
    assert circuit.reopens_at(POLICY, T0) is None


def test_opens_at_failure_threshold() -> None:
    circuit = failed_times(Circuit(), 3)
    assert circuit.state is CircuitState.OPEN
    assert circuit.failures == 3
    assert circuit.changed_at == T0 + 2  # the third failure opened it
    assert circuit.last_error == "error 3"
    assert circuit.reopens_at(POLICY, T0) == T0 + 2 + 60


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_threshold_is_the_number_of_failures_that_opens(threshold: int) -> None:
    policy = HealthPolicy(failure_threshold=threshold)
    circuit = Circuit()
    for i in range(threshold - 1):
        circuit = circuit.failed(policy, T0 + i, "x")
        assert circuit.state is CircuitState.CLOSED
    circuit = circuit.failed(policy, T0 + threshold, "x")
    assert circuit.state is CircuitState.OPEN


@pytest.mark.parametrize(
    ("now", "admits"),
    [
        pytest.param(T0, False, id="just-opened"),
        pytest.param(T0 + 59.999, False, id="before-cooldown"),
        pytest.param(T0 + 60, True, id="cooldown-over"),
        pytest.param(T0 + 3600, True, id="long-after"),
    ],
)
def test_open_admits_only_after_cooldown(now: float, admits: bool) -> None:
    assert opened_at(T0).admits(POLICY, now) is admits


def test_probing_turns_half_open_and_blocks_others_until_another_cooldown() -> None:
    probe_at = T0 + 60
    circuit = opened_at(T0).probing(probe_at)
    assert circuit.state is CircuitState.HALF_OPEN
    assert circuit.changed_at == probe_at
    assert circuit.failures == POLICY.failure_threshold
    assert circuit.last_error == "connect: refused"
    # While the probe is out, nothing else goes.
    assert not circuit.admits(POLICY, probe_at)
    assert not circuit.admits(POLICY, probe_at + 59.9)
    # Mail waiting behind the probe looks again when its verdict is due, then after a cooldown.
    assert circuit.reopens_at(POLICY, probe_at + 1) == probe_at + 5
    assert circuit.reopens_at(POLICY, probe_at + 5) == probe_at + 60
    # A probe that never reports does not block for ever: another may go.
    assert circuit.admits(POLICY, probe_at + 60)


def test_probing_a_closed_circuit_changes_nothing() -> None:
    closed = failed_times(Circuit(), 2)
    assert closed.probing(T0 + 100) is closed


def test_failure_while_half_open_reopens_with_new_changed_at() -> None:
    half_open = opened_at(T0).probing(T0 + 60)
    circuit = half_open.failed(POLICY, T0 + 65, "tls: handshake failed")
    assert circuit == Circuit(
        CircuitState.OPEN, POLICY.failure_threshold + 1, T0 + 65, "tls: handshake failed"
    )
    assert not circuit.admits(POLICY, T0 + 124)
    assert circuit.admits(POLICY, T0 + 125)
    assert circuit.reopens_at(POLICY, T0) == T0 + 125


def test_failure_while_open_restarts_the_cooldown() -> None:
    circuit = opened_at(T0).failed(POLICY, T0 + 30, "late report")
    assert circuit.state is CircuitState.OPEN
    assert circuit.changed_at == T0 + 30
    assert circuit.reopens_at(POLICY, T0) == T0 + 90


@pytest.mark.parametrize(
    "circuit",
    [
        pytest.param(opened_at(T0).probing(T0 + 60), id="half-open"),
        pytest.param(opened_at(T0), id="open"),
    ],
)
def test_success_closes_and_resets_failures(circuit: Circuit) -> None:
    closed = circuit.succeeded(T0 + 70)
    assert closed == Circuit(CircuitState.CLOSED, 0, T0 + 70, None)
    assert closed.admits(POLICY, T0 + 70)
    assert closed.reopens_at(POLICY, T0) is None


def test_success_on_closed_clears_failures_and_keeps_changed_at() -> None:
    circuit = Circuit(CircuitState.CLOSED, 2, 500.0, "rcpt: 421 busy")
    assert circuit.succeeded(T0) == Circuit(CircuitState.CLOSED, 0, 500.0, None)


def test_success_on_a_clean_circuit_is_the_same_object() -> None:
    circuit = Circuit(changed_at=500.0)
    assert circuit.succeeded(T0) is circuit


def test_success_between_failures_restarts_the_count() -> None:
    circuit = failed_times(Circuit(), 2).succeeded(T0 + 10)
    circuit = failed_times(circuit, 2, start=T0 + 20)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures == 2


def test_full_cycle() -> None:
    circuit = failed_times(Circuit(), 3)  # opens at T0 + 2
    assert not circuit.admits(POLICY, T0 + 30)
    assert circuit.admits(POLICY, T0 + 62)
    circuit = circuit.probing(T0 + 62).failed(POLICY, T0 + 63, "still down")
    assert not circuit.admits(POLICY, T0 + 122)
    circuit = circuit.probing(T0 + 123).succeeded(T0 + 124)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.failures == 0
    assert circuit.admits(POLICY, T0 + 124)


def test_states_are_strings() -> None:
    assert [s.value for s in CircuitState] == ["closed", "half_open", "open"]


def test_an_operators_flush_closes_an_open_circuit() -> None:
    opened = opened_at(T0)
    assert opened.reset(T0 + 10) == Circuit(CircuitState.CLOSED, 0, T0 + 10, None)
    assert opened.reset(T0 + 10).admits(POLICY, T0 + 10)
    closed = failed_times(Circuit(), 2)
    assert closed.reset(T0 + 10) is closed
