"""Injected faults and delays: what a fixture's ``fault`` and ``delay_ms`` make the agent do."""

from __future__ import annotations

import os
import sys

from mockagent.agent import Fatal
from mockagent.wire import MAX_LINE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from mockagent.agent import Agent


def fires(agent: Agent, fault: dict[str, Any], attempt: int, call: int) -> bool:
    if "attempt" in fault and fault["attempt"] != attempt:
        return False
    if "call" in fault and fault["call"] != call:
        return False
    p = fault.get("probability")
    return not (p is not None and (p <= 0 or agent.rng.random() >= p))


def delay(agent: Agent, spec: Any) -> None:
    """Wait a fixed or random (seeded) time; heartbeats go on meanwhile."""
    if isinstance(spec, dict) and "uniform" in spec:
        lo, hi = spec["uniform"]
        ms = agent.rng.uniform(lo, hi)
    elif isinstance(spec, dict) and "lognormal" in spec:
        p = spec["lognormal"]
        ms = min(p["cap_ms"], agent.rng.lognormvariate(p["mu"], p["sigma"]))
    else:
        ms = float(spec or 0)
    if ms > 0:
        if isinstance(spec, dict):
            agent.log(f"random delay {ms:.3f} ms")
        agent.stop.wait(ms / 1000.0)


def fire(agent: Agent, fault: dict[str, Any], cmd: dict[str, Any]) -> None:
    kind = fault["kind"]
    agent.log(f"injecting fault {kind}")
    if kind == "exit":
        os._exit(int(fault.get("code", 1)))
    elif kind == "hang":
        agent.heartbeats_on = False
        agent.stop.wait()
        raise Fatal("hang ended by stop")
    elif kind == "stop_heartbeats":
        agent.heartbeats_on = False
    elif kind == "garbage":
        agent.out.raw(b"this is not json {{{\n")
    elif kind == "oversized":
        agent.out.raw(b'{"kind":"log","pad":"' + b"x" * (MAX_LINE + 10) + b'"}\n')
    elif kind == "half_line":
        agent.out.raw(b'{"kind":"event","message_id":"evt-')
        os._exit(int(fault.get("code", 1)))
    elif kind == "stderr_burst":
        n = int(fault.get("lines", 10_000))
        for i in range(n):
            sys.stderr.write(f"mockagent stderr line {i}\n")
        sys.stderr.flush()
    elif kind == "wrong_task":
        agent.emit({**agent.event(cmd, "builder.progress"), "task_id": "T-9999"})
    elif kind == "wrong_correlation":
        agent.emit({**agent.event(cmd, "builder.progress"), "correlation_id": "corr-wrong"})
