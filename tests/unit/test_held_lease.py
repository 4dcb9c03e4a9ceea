"""What a running worker knows of its own lease (``HeldLease``): when a run it cannot renew is stopped.
Pure: every time is a parameter."""
from __future__ import annotations

import pytest

from orchestrator.leases import LEASE_STOP_MARGIN, HeldLease

T = 1_800_000_000.0  # the claim's time
LEASE = 30.0


def claimed() -> HeldLease:
    return HeldLease(LEASE, T + LEASE)  # the claim event's expiry


def test_a_run_whose_renewals_fail_is_stopped_a_fifth_of_a_lease_before_the_lease_it_stored_ends() -> None:
    held = claimed()
    held.renewed(T + 10 + LEASE)  # the heartbeat at +10 s stored an expiry at +40 s
    held.failed(T + 20, "STORAGE_ERROR: the server went away")  # every heartbeat from +20 s on fails
    assert held.stop_at == pytest.approx(T + 40 - LEASE * LEASE_STOP_MARGIN) == pytest.approx(T + 34)
    assert not held.must_stop(T + 33.9)
    assert held.must_stop(T + 34) and held.must_stop(T + 39.99)
    assert held.stop_at < held.expires_at  # before the lease may expire, never after


def test_a_run_whose_renewals_succeed_is_never_stopped_whatever_the_clock_says() -> None:
    held = claimed()
    assert not held.must_stop(T + 10 * LEASE)  # a clock stepped far forward: a takeover is the heartbeat's to see


def test_a_renewal_that_succeeds_after_failures_clears_them_and_the_lease_is_held_again() -> None:
    held = claimed()
    held.failed(T + 10, "STORAGE_ERROR: down")
    held.failed(T + 11, "STORAGE_ERROR: still down")
    assert held.failing_since == T + 10 and held.last_error == "STORAGE_ERROR: still down"
    held.renewed(T + 20 + LEASE)
    assert held.failing_since is None and not held.must_stop(T + 45)
    assert held.expires_at == T + 50


def test_a_failed_renewal_never_moves_the_expiry_and_a_late_one_never_shortens_it() -> None:
    held = claimed()
    held.failed(T + 10, "STORAGE_ERROR: down")  # it may have been stored: not counted, so the run stops earlier
    assert held.expires_at == T + LEASE
    held.renewed(T + 5)  # written under a clock stepped back: the claim's expiry still stands
    assert held.expires_at == T + LEASE


def test_the_error_of_a_stopped_run_says_since_when_why_and_that_it_stopped_before_the_lease_ended() -> None:
    held = claimed()
    held.failed(T + 10, "STORAGE_ERROR: PostgreSQL is restarting")
    held.stopped_at = T + 24
    why = held.why_stopped()
    assert "since 2027-01-15T08:00:10" in why and "PostgreSQL is restarting" in why
    assert "stopped at 2027-01-15T08:00:24" in why and "ended at 2027-01-15T08:00:30" in why
