"""mirror/meter.py: resync rate, ETA from the net drain rate, and the lag."""

from __future__ import annotations

import math

import pytest

from openevs.agent.mirror.meter import WINDOW_S, ResyncMeter, lag_s

MIB = 1 << 20


def test_rate_and_eta_of_a_steady_copy() -> None:
    meter = ResyncMeter()
    for second in range(6):  # 10 MiB/s copied, 100 MiB left at the start
        meter.observe(float(second), second * 10 * MIB, (100 - 10 * second) * MIB)
    assert meter.rate_bytes_per_s(5.0) == pytest.approx(10 * MIB)
    assert meter.eta_s(5.0) == pytest.approx(5.0)


def test_eta_counts_what_the_user_writes_meanwhile() -> None:
    """Copying 10 MiB/s while the user dirties 5 MiB/s: what is left shrinks by 5 MiB/s."""
    meter = ResyncMeter()
    for second in range(6):
        meter.observe(float(second), second * 10 * MIB, (100 - 5 * second) * MIB)
    assert meter.rate_bytes_per_s(5.0) == pytest.approx(10 * MIB)
    assert meter.eta_s(5.0) == pytest.approx(75 / 5)


def test_no_eta_when_nothing_drains_and_zero_when_nothing_is_left() -> None:
    meter = ResyncMeter()
    meter.observe(0.0, 0, 50 * MIB)
    meter.observe(2.0, 0, 60 * MIB)
    assert meter.eta_s(2.0) is None and meter.rate_bytes_per_s(2.0) == 0
    meter.observe(3.0, 60 * MIB, 0)
    assert meter.eta_s(3.0) == 0


def test_old_samples_leave_the_window_and_a_silent_meter_has_no_rate() -> None:
    meter = ResyncMeter()
    meter.observe(0.0, 0, 1000 * MIB)
    meter.observe(1.0, 100 * MIB, 900 * MIB)  # 100 MiB/s at first
    for t in range(2, 30):
        meter.observe(float(t), (100 + (t - 1)) * MIB, (900 - (t - 1)) * MIB)  # then 1 MiB/s
    assert meter.rate_bytes_per_s(29.0) == pytest.approx(1 * MIB, rel=0.01)
    assert meter.rate_bytes_per_s(29.0 + WINDOW_S + 1) == 0


def test_lag_starts_when_the_peer_first_lacks_a_write_and_ends_with_nothing_left() -> None:
    assert lag_s(None, 0, 10.0) == (0.0, None)
    assert lag_s(None, 4096, 10.0) == (0.0, 10.0)
    assert lag_s(10.0, 4096, 12.5) == (2.5, 10.0)
    assert lag_s(10.0, 0, 13.0) == (0.0, None)
    assert not math.isnan(lag_s(20.0, 1, 10.0)[0])  # a clock step back never goes negative
