"""Checkpoints around the commands of exactly-once roles (DESIGN.md §5.12).

Before a command of such a role is first sent, the workspace is checkpointed;
when it is sent again after a crash, the workspace is rolled back to that
checkpoint first; after its answer, the checkpoint the turn ended on is
recorded. This module decides which; :mod:`lorch.store.checkpoint` keeps the trees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorch.agents.transport import TurnCheckpoint
from lorch.core.state import Pending, State
from lorch.store.checkpoint import STORE, Checkpoints

# Paths listed in a ledger record: the first ones, sorted; the count says how many.
LISTED = 100

Payload = dict[str, Any]


class TurnCheckpoints:
    """What the engine does around a command of a role lorch makes exactly-once.

    Both methods return the system records to append (``(event, payload)``);
    the engine appends them, so the ledger stays its only writer.
    """

    def __init__(self, workspace: Path, *, durable: bool = True) -> None:
        self.workspace = workspace
        self.durable = durable
        self._ck: Checkpoints | None = None
        # The last post checkpoint this process recorded (see before_send).
        self._post: str | None = None

    @property
    def checkpoints(self) -> Checkpoints:
        if self._ck is None:
            self._ck = Checkpoints.shared(
                self.workspace, self.workspace / STORE, durable=self.durable
            )
        return self._ck

    def close(self) -> None:
        if self._ck is not None:
            self._ck.close()

    def before_send(self, state: State, command: Payload) -> tuple[list[tuple[str, Payload]], str]:
        """Checkpoint before ``command`` is first sent, or roll back to that checkpoint.

        Call it only when no agent can be working on the command's key (at
        resume, after the crashed run's agents are ended). Returns the records
        to append before the command, and the checkpoint the command starts from.
        """
        ik = str(command["idempotency_key"])
        role = str(command["to"]["agent_type"])
        pre = state.pre_checkpoint(ik)
        if pre is None:
            # The workspace is the last post checkpoint's when that is the last
            # record and this process took it: no agent's turn, start, exit,
            # rejection or resume came between (docs/decisions.md D37).
            # Otherwise it is checkpointed again.
            tree = self._post if self._post is not None and state.tree_now == self._post else None
            if tree is None:
                tree = self.checkpoints.take()
            payload: Payload = {"role": role, "idempotency_key": ik, "phase": "pre", "tree": tree}
            return [("system.checkpoint", payload)], tree
        restored = self.checkpoints.rollback(pre)
        payload = {
            "role": role,
            "idempotency_key": ik,
            "tree": pre,
            "restored": restored[:LISTED],
            "restored_count": len(restored),
        }
        return [("system.rollback", payload)], pre

    def after_turn(
        self, pending: Pending, taken: TurnCheckpoint | None = None
    ) -> list[tuple[str, Payload]]:
        """The post-command checkpoint of an answered command (none if already recorded).

        ``taken``: the checkpoint the transport took when the turn ended (ACP,
        whose artifacts are the files changed up to it); recorded as it is.
        """
        if pending.pre is None or pending.post is not None:
            return []
        if taken is not None:
            post, changed = taken.tree, list(taken.changed)
        else:
            post = self.checkpoints.take()
            changed = self.checkpoints.changed(pending.pre, post)
        self._post = post
        payload: Payload = {
            "role": pending.role,
            "idempotency_key": pending.ik,
            "phase": "post",
            "tree": post,
            "changed": changed[:LISTED],
            "changed_count": len(changed),
        }
        return [("system.checkpoint", payload)]
