"""What an ACP port is to the parts that serve it: its settings, and the :class:`Host` view.

The client (the agent's requests), the turn (one command attempt) and the
event loop's log handler act on their port through :class:`Host`, so that none
of them imports :mod:`lorch.agents.acp.port`, which imports them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lorch.agents.acp.outbox import Outbox
from lorch.agents.acp.policy import Policy
from lorch.agents.acp.terminals import Terminals
from lorch.agents.acp.wire import AcpFault
from lorch.agents.transport import Launch
from lorch.wire.protocol import Record

if TYPE_CHECKING:
    import acp as sdk

INIT_TIMEOUT_S = 60.0
TEST_TIMEOUT_S = 600.0
MAX_UPDATES_PER_TURN = 10_000


@dataclass(frozen=True)
class AcpSettings:
    """What the ACP transport needs beyond a :class:`Launch`."""

    workspace: Path
    task: Mapping[str, Any] = field(default_factory=dict)
    permissions: Mapping[str, str] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=dict)
    test_cmd: str | list[str] | None = None
    # Makes a checkpoint of the workspace and lists what changed between two.
    take: Callable[[], str] | None = None
    changed: Callable[[str, str], list[str]] | None = None
    init_timeout_s: float = INIT_TIMEOUT_S
    # How long the task's test command may run after a builder turn.
    test_timeout_s: float = TEST_TIMEOUT_S
    # Lines one turn may record before the attempt fails.
    max_updates_per_turn: int = MAX_UPDATES_PER_TURN
    # Whether lorch offers its file service (fs/*) in initialize (docs/real-agents.md).
    fs: bool = False


class Host(Protocol):
    """The port, as its client, turns and log handler see it."""

    agent_id: str
    role: str
    launch: Launch
    settings: AcpSettings
    out: Outbox
    policy: Policy
    terminals: Terminals
    conn: Any
    session: str | None
    faulted: AcpFault | None
    test_groups: set[int]

    def alive(self) -> bool: ...

    def auth_message(self, what: str, error: sdk.RequestError | None = None) -> str: ...

    def flush_log(self) -> None: ...

    def in_turn(self, session_id: str, request: str) -> bool: ...

    def log(self, entry: Record) -> None: ...

    def release_held(self) -> None: ...
