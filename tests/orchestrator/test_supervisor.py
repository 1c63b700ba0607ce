"""Watchdog, backoff and secret redaction on a fake clock: no waiting."""

from __future__ import annotations

import random

import pytest

from lorch.supervisor import Backoff, Redactor, Watchdog, secret_values


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_three_missed_heartbeats_make_an_agent_unhealthy() -> None:
    clock = FakeClock()
    w = Watchdog(clock, interval=10, misses=3)
    clock.t += 29.9
    assert not w.unhealthy()
    w.beat()
    clock.t += 30.0
    assert not w.unhealthy()
    clock.t += 0.2
    assert w.unhealthy()


def test_action_timeout() -> None:
    clock = FakeClock()
    w = Watchdog(clock, interval=10)
    w.arm(300)
    clock.t += 299
    w.beat()
    assert not w.timed_out()
    assert w.next_check_in() == pytest.approx(1.0)
    clock.t += 2
    assert w.timed_out()
    w.disarm()
    assert not w.timed_out()


def test_backoff_doubles_with_full_jitter_and_a_cap() -> None:
    b = Backoff(initial=1, factor=2, cap=60, rng=random.Random(7))
    assert [b.ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    for n in range(8):
        delays = [b.delay(n) for _ in range(200)]
        assert all(0 <= d <= b.ceiling(n) for d in delays)
        assert max(delays) > b.ceiling(n) * 0.8  # full jitter spreads over the range
    again = Backoff(initial=1, factor=2, cap=60, rng=random.Random(7))
    assert Backoff(initial=1, factor=2, cap=60, rng=random.Random(7)).delay(3) == again.delay(3)


def test_secret_values_are_redacted() -> None:
    env = {
        "GITHUB_TOKEN": "ghp_abcdef",
        "API_KEY": "k-123456",
        "MY_SECRET": "s3cr3t!",
        "HOME": "/root",
    }
    secrets = secret_values(env)
    assert set(secrets) == {"ghp_abcdef", "k-123456", "s3cr3t!"}
    r = Redactor(secrets)
    assert r.text("token=ghp_abcdef home=/root") == "token=*** home=/root"
    assert r.raw(b'{"k":"k-123456"}') == b'{"k":"***"}'
