"""Watchdog, backoff and secret redaction on a fake clock: no waiting."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

from lorch.agents.ndjson import AgentProcess
from lorch.agents.transport import Inbox, Launch
from lorch.engine.timing import Backoff, Watchdog
from lorch.wire.redact import Redactor, secret_values


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


# -- reading agents' stdout (Inbox) -------------------------------------------


def _agent(tmp_path: Path, inbox: Inbox, code: str) -> AgentProcess:
    launch = Launch(
        role="builder",
        argv=[sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "logs" / "builder.ndjson",
        generation=1,
        redactor=Redactor([]),
    )
    return AgentProcess(launch, inbox)


EVENT = {
    "kind": "event",
    "message_id": "evt-1",
    "correlation_id": "corr-1",
    "task_id": "T-1",
    "from": {"agent_type": "builder"},
    "event": "builder.completed",
    "payload": {},
    "occurred_at": "2026-12-01T12:00:00Z",
}
HEARTBEAT = {
    "kind": "heartbeat",
    "agent": {"agent_type": "builder", "agent_id": "builder#1"},
    "seq": 1,
    "status": "busy",
    "pid": 1,
    "uptime_s": 0.1,
    "last_activity_at": "2026-12-01T12:00:00Z",
}


def test_get_reads_past_partial_lines_until_an_item(tmp_path: Path) -> None:
    # A heartbeat, then half a line, then the rest, in three writes spaced out so
    # that they arrive in separate reads: the heartbeat is an item, the half line
    # is not, and get must not return the event before the third write.
    line = json.dumps(EVENT) + "\n"
    parts = (json.dumps(HEARTBEAT) + "\n", line[:40], line[40:])
    code = (
        "import sys, time\n"
        f"for part in {parts!r}:\n"
        "    sys.stdout.write(part); sys.stdout.flush(); time.sleep(0.2)\n"
        "sys.stdin.readline()\n"
    )
    inbox = Inbox()
    proc = _agent(tmp_path, inbox, code)
    try:
        # The first heartbeat is also the agent's start-up check: ready, then the beat.
        for kind in ("ready", "heartbeat"):
            beat = inbox.get(timeout=30)
            assert beat is not None and (beat.kind, beat.role, beat.generation) == (
                kind,
                "builder",
                1,
            )
        item = inbox.get(timeout=30)
        assert item is not None and item.kind == "event" and item.message == EVENT
    finally:
        proc.stop()
        inbox.close()


def test_a_sleeping_runner_still_drains_its_agents(tmp_path: Path) -> None:
    # 400 KiB of log lines: more than a pipe holds, so the agent only gets to
    # exit if its stdout is read while lorch waits out a backoff.
    log = json.dumps(
        {"kind": "log", "level": "info", "message": "x" * 1000, "timestamp": "2026-12-01T12:00:00Z"}
    )
    code = f"import sys\nfor _ in range(400): sys.stdout.write({log!r} + '\\n')\n"
    inbox = Inbox()
    proc = _agent(tmp_path, inbox, code)
    try:
        deadline = time.monotonic() + 30
        while proc.alive() and time.monotonic() < deadline:
            inbox.wait(0.05)
        assert not proc.alive()
    finally:
        proc.stop()
        inbox.close()
    assert len((tmp_path / "logs" / "builder.ndjson").read_text().splitlines()) == 400


def test_stop_reads_what_an_agent_writes_as_it_exits(tmp_path: Path) -> None:
    # On EOF the agent writes more than a pipe holds, then exits 0: stop must
    # read it, or the agent blocks until SIGTERM.
    code = "import sys\nsys.stdin.read()\nsys.stdout.write('x' * 400_000 + '\\n')\n"
    inbox = Inbox()
    proc = _agent(tmp_path, inbox, code)
    try:
        assert proc.stop(grace=30) == 0
    finally:
        inbox.close()


def test_an_item_posted_from_another_thread_ends_the_wait() -> None:
    # A transport that runs in its own thread (ACP) posts its items: a waiting
    # get must return the item, not wait out its timeout.
    import threading

    from lorch.agents.transport import Incoming

    inbox = Inbox()
    item = Incoming("reviewer", 3, "heartbeat")
    started = threading.Event()

    def post() -> None:
        started.wait(30)
        inbox.post(item)

    t = threading.Thread(target=post)
    t.start()
    try:
        started.set()
        assert inbox.get(timeout=3600) is item
        assert inbox.get(timeout=0) is None
    finally:
        t.join()
        inbox.close()


def test_items_posted_together_arrive_in_order_with_one_wake_up() -> None:
    import os

    from lorch.agents.transport import Incoming

    inbox = Inbox()
    items = [Incoming("builder", 1, "heartbeat", raw_size=n) for n in range(5)]
    try:
        inbox.post_many(items)
        assert os.read(inbox._wake_r, 100) == b"\0"  # one byte: one thread switch
        os.write(inbox._wake_w, b"\0")
        assert [inbox.get(timeout=5) for _ in items] == items
        assert inbox.get(timeout=0) is None
    finally:
        inbox.close()


def test_a_starting_agent_has_a_start_up_grace_then_the_heartbeat_rule() -> None:
    clock = FakeClock()
    w = Watchdog(clock, interval=0.1, misses=3, start_grace=10)
    clock.t += 9.9
    w.reset()  # a command sent meanwhile does not end the start-up
    assert not w.unhealthy() and w.next_check_in() == pytest.approx(10)
    clock.t += 10.1
    assert w.unhealthy()
    w.beat()  # the first heartbeat: from now on, three missed intervals
    clock.t += 0.29
    assert not w.unhealthy()
    clock.t += 0.02
    assert w.unhealthy()


def test_waiting_for_a_readable_fd_keeps_the_inbox_draining(tmp_path: Path) -> None:
    # A prompt waits on stdin through the inbox: items posted meanwhile are
    # taken in (one heartbeat per agent, the rest all), and the wait ends once
    # the descriptor is readable.
    import threading

    from lorch.agents.transport import Incoming

    inbox = Inbox()
    r, w = os.pipe()
    beat, exited = Incoming("builder", 1, "heartbeat"), Incoming("builder", 1, "exit")
    other = Incoming("reviewer", 1, "heartbeat")
    posted = threading.Event()

    def agent_then_user() -> None:
        for _ in range(1000):
            inbox.post(beat)
            inbox.post(other)
        inbox.post(exited)
        posted.set()
        os.write(w, b"1\n")  # the user answers only after the agent said all that

    t = threading.Thread(target=agent_then_user)
    t.start()
    try:
        inbox.wait_readable(r)
        assert posted.is_set() and os.read(r, 10) == b"1\n"
        assert [inbox.get(timeout=0) for _ in range(4)] == [beat, other, exited, None]
        # A descriptor epoll cannot wait on (a regular file) is readable at once.
        (tmp_path / "answers").write_text("2\n")
        with open(tmp_path / "answers", "rb") as f:
            inbox.wait_readable(f.fileno())
    finally:
        t.join()
        os.close(r)
        os.close(w)
        inbox.close()
