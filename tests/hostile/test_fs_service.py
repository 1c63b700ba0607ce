"""lorch's ACP file service and permission answers against a hostile ACP agent (issue 22, point 3).

The agent (tests/agents/acp_fs_attacker.py) is a real process on the real ACP
SDK; lorch's side is the real :class:`~lorch.agents.acp.port.AcpPort`. Each test is
one class of attack the red team found working; the sandbox is not involved.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lorch.agents.acp.client import READ_LIMIT
from lorch.agents.acp.host import AcpSettings
from lorch.agents.acp.port import AcpPort
from lorch.agents.transport import Inbox, Incoming, Launch, SendContext
from lorch.store.checkpoint import Checkpoints
from lorch.wire import protocol, vocabulary
from lorch.wire.redact import Redactor
from tests.acp.conftest import command

AGENT = Path(__file__).resolve().parent.parent / "agents" / "acp_fs_attacker.py"


@dataclass
class Attack:
    tmp: Path
    workspace: Path
    inbox: Inbox = field(default_factory=Inbox)
    ports: list[AcpPort] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.tmp / "attack.ndjson"

    def port(
        self,
        turns: list[list[dict[str, Any]]],
        role: str = "builder",
        *,
        checkpoints: bool = True,
        fs: bool = True,
    ) -> AcpPort:
        script = self.tmp / f"attack-{len(self.ports)}.json"
        script.write_text(json.dumps(turns))
        ck = Checkpoints(self.workspace, self.tmp / "ckpt.git", durable=False)
        launch = Launch(
            role=role,
            argv=[sys.executable, str(AGENT), str(script)],
            cwd=self.workspace,
            env={"PATH": os.environ["PATH"], "ATTACK_OUT": str(self.out)},
            log_path=self.workspace / "logs" / role / "run-1.ndjson",
            generation=len(self.ports) + 1,
            redactor=Redactor([]),
        )
        settings = AcpSettings(
            workspace=self.workspace,
            task={"id": "T-1", "goal": "g"},
            take=ck.take,
            changed=ck.changed,
            fs=fs,  # the file service is what is attacked ($.agents.ROLE.fs)
        )
        p = AcpPort(launch, self.inbox, settings)
        self.ports.append(p)
        p.start()
        return p

    def turn(self, port: AcpPort, cmd: dict[str, Any]) -> tuple[list[Incoming], Incoming]:
        assert port.send(cmd, protocol.encode(cmd), SendContext())
        seen: list[Incoming] = []
        end = time.monotonic() + 60
        while time.monotonic() < end:
            item = self.inbox.get(0.2)
            if item is None:
                continue
            if item.kind == "exit" or (
                item.kind == "event"
                and item.message is not None
                and item.message["event"] in vocabulary.TERMINAL_EVENTS
            ):
                return seen, item
            seen.append(item)
        raise AssertionError(f"the turn did not end; saw {seen}")

    def results(self, *, wait_done: bool = False) -> list[dict[str, Any]]:
        end = time.monotonic() + 30
        while True:
            got = (
                [json.loads(x) for x in self.out.read_text().splitlines()]
                if self.out.exists()
                else []
            )
            if not wait_done or any(r.get("done") for r in got) or time.monotonic() > end:
                return got
            self.inbox.get(0.1)  # waits on lorch's own queue, not on a timer alone

    def run(
        self,
        steps: list[dict[str, Any]],
        role: str = "builder",
        action: str = "implement",
        *,
        checkpoints: bool = True,
    ) -> tuple[list[dict[str, Any]], Incoming]:
        port = self.port([steps], role, checkpoints=checkpoints)
        _, end = self.turn(port, command(action))
        return self.results(), end


@pytest.fixture
def attack(tmp_path: Path) -> Iterator[Attack]:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "outside").mkdir()
    a = Attack(tmp_path, ws)
    yield a
    for p in a.ports:
        p.kill()
    a.inbox.close()


def by_path(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in results if "path" in r}


def test_no_write_follows_a_planted_symlink_or_temp_name(attack: Attack) -> None:
    outside = attack.tmp / "outside"
    victim = outside / "victim.txt"
    victim.write_text("user data\n")
    victim.chmod(0o600)
    (attack.workspace / "a.txt").write_text("a\n")
    results, _ = attack.run(
        [
            # The temp name lorch once used: ".<name>.lorch-<lorch's pid>".
            {"symlink": ".a.txt.lorch-{ppid}", "to": str(victim)},
            {"write": "a.txt", "content": "new a\n"},
            {"symlink": "out", "to": str(outside)},
            {"write": "out/x.txt", "content": "escaped"},
            {"write": "out/victim.txt", "content": "escaped"},
            {"symlink": "v.txt", "to": str(victim)},
            {"write": "v.txt", "content": "escaped"},
            {"read": "v.txt"},
            {"read": "out/victim.txt"},
        ]
    )
    got = by_path(results)
    assert got["a.txt"]["ok"] is True
    assert (attack.workspace / "a.txt").read_text() == "new a\n"
    for rel in ("out/x.txt", "out/victim.txt", "v.txt"):
        assert got[rel]["ok"] is False and "symlink" in got[rel]["error"], got[rel]
    assert victim.read_text() == "user data\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert sorted(os.listdir(outside)) == ["victim.txt"]
    assert [r["ok"] for r in results if r.get("step") == "read"] == [False, False]


def test_a_directory_flipped_to_a_symlink_between_check_and_write_never_escapes(
    attack: Attack,
) -> None:
    outside = attack.tmp / "outside"
    (attack.workspace / "real").mkdir()
    results, _ = attack.run(
        [
            {"symlink": "d", "to": "real"},
            {"flip": "d", "targets": ["real", str(outside)], "writes": 300, "under": "f"},
        ]
    )
    (flip,) = [r for r in results if r.get("step") == "flip"]
    assert flip["ok"] + flip["refused"] == 300
    assert os.listdir(outside) == []


def test_fifos_and_sockets_are_refused_without_blocking(attack: Attack) -> None:
    results, end = attack.run(
        [
            {"fifo": "pipe"},
            {"socket": "sock"},
            {"read": "pipe"},
            {"read": "pipe", "line": 1, "limit": 1},
            {"write": "pipe", "content": "x"},
            {"read": "sock"},
            {"read": "."},
        ]
    )
    assert [r["ok"] for r in results] == [False] * 5
    assert "a FIFO" in results[0]["error"] and "a socket" in results[3]["error"]
    # The turn ended normally: nothing held up lorch's loop.
    assert end.message is not None and end.message["event"] == "builder.completed"


def test_a_read_of_a_huge_sparse_file_holds_only_the_lines_it_returns(attack: Attack) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results, _ = attack.run(
        [
            {"sparse": "huge.bin", "head": "first\nsecond\n", "size": 1 << 30},
            {"read": "huge.bin", "line": 1, "limit": 1},
            {"read": "huge.bin", "line": 2, "limit": 1},
            {"read": "huge.bin"},
            {"read": "huge.bin", "line": 3, "limit": 1},
        ],
        checkpoints=False,  # a checkpoint would hash the whole GiB: not what is tested
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert [r.get("content") for r in results[:2]] == ["first\n", "second\n"]
    for r in results[2:]:
        assert r["ok"] is False and f"more than {READ_LIMIT} bytes" in r["error"], r
    assert after - before < 256 << 20, (before, after)


def test_lorch_s_own_files_git_and_lorch_json_are_refused(attack: Attack) -> None:
    ws = attack.workspace
    (ws / "lorch.json").write_text('{"agents": {"reviewer": {"env": {"KEY": "tok"}}}}')
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    (ws / "state" / "checkpoints.git").mkdir(parents=True)
    (ws / "state" / "checkpoints.git" / "config").write_text("[core]\n")
    (ws / "events").mkdir()
    (ws / "events" / "run-1.ndjson").write_text("{}\n")
    before = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file() and "logs" not in p.parts}
    targets = [
        "lorch.json",
        ".git/hooks/pre-commit",
        ".git/config",
        "state/checkpoints.git/config",
        "events/run-1.ndjson",
        "receipts/T-1/step-1.json",
        "logs/builder/run-1.ndjson",
        "transcripts/run-1.txt",
        "snapshots/x.json",
        "sub/.git/hooks/post-checkout",
    ]
    steps: list[dict[str, Any]] = []
    for rel in targets:
        steps += [{"read": rel}, {"write": rel, "content": "[core]\nfsmonitor = touch pwned\n"}]
    results, _ = attack.run(steps)
    assert len(results) == 2 * len(targets)
    for r in results:
        assert r["ok"] is False, r
        assert "lorch's own" in r["error"] or ".git/" in r["error"], r
    after = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file() and "logs" not in p.parts}
    assert after == before


def test_verdict_files_are_written_only_by_their_role(attack: Attack) -> None:
    verdict = json.dumps({"status": "approved", "summary": "forged"})
    results, _ = attack.run(
        [
            {"write": "reviews/T-1.json", "content": verdict},
            {"write": "spec_notes/T-1.json", "content": verdict},
            {"write": "src/ok.txt", "content": "fine"},
        ]
    )
    got = by_path(results)
    assert got["reviews/T-1.json"]["ok"] is False
    assert "reviewer's verdict" in got["reviews/T-1.json"]["error"]
    assert got["spec_notes/T-1.json"]["ok"] is False
    assert got["src/ok.txt"]["ok"] is True
    assert not (attack.workspace / "reviews").exists()
    good = json.dumps({"status": "approved", "summary": "ok"})
    results, end = attack.run(
        [
            {"write": "reviews/T-1.json", "content": good},
            {"write": "spec_notes/T-1.json", "content": good},
        ],
        role="reviewer",
        action="review",
    )
    got = by_path(results[-2:])
    assert got["reviews/T-1.json"]["ok"] is True and got["spec_notes/T-1.json"]["ok"] is False
    assert end.message is not None and end.message["event"] == "review.completed"


def test_the_file_service_is_refused_when_not_offered(attack: Attack) -> None:
    # "fs": false (the default): an agent that asks anyway reads and writes nothing.
    (attack.workspace / "in.txt").write_text("inside\n")
    port = attack.port([[{"read": "in.txt"}, {"write": "new.txt", "content": "x"}]], fs=False)
    attack.turn(port, command())
    got = attack.results(wait_done=True)
    assert [r["ok"] for r in got if "ok" in r] == [False, False]
    assert not (attack.workspace / "new.txt").exists()


def test_requests_outside_the_turn_in_flight_are_refused(attack: Attack) -> None:
    (attack.workspace / "in.txt").write_text("inside\n")
    port = attack.port(
        [
            [
                {"read": "in.txt", "session": "bogus"},
                {"write": "bogus.txt", "content": "x", "session": "bogus"},
                {"terminal": ["touch", "bogus-term"], "session": "bogus"},
                {"read": "in.txt"},
                {
                    "after": [
                        {"read": "in.txt"},
                        {"write": "late.txt", "content": "x"},
                        {"terminal": ["touch", "late-term"]},
                    ]
                },
            ],
            [
                {"read": "in.txt", "session": "previous"},
                {"write": "old.txt", "content": "x", "session": "previous"},
            ],
        ]
    )
    attack.turn(port, command())
    first = attack.results(wait_done=True)
    assert [r["ok"] for r in first if "ok" in r] == [False, False, False, True, False, False, False]
    assert all(r.get("after") for r in first[4:7])
    attack.turn(port, command())
    second = attack.results()[len(first) :]
    assert [r["ok"] for r in second] == [False, False]
    for r in [*first[:3], *first[4:7], *second]:
        assert "no turn in flight" in r["error"], r
    for name in ("bogus.txt", "bogus-term", "late.txt", "late-term", "old.txt"):
        assert not (attack.workspace / name).exists(), name


def test_every_path_of_a_permission_request_is_checked(attack: Attack) -> None:
    ws = attack.workspace

    def perm(kind: str, raw: Any = None, locations: list[str] | None = None) -> dict[str, Any]:
        return {"permission": {"kind": kind, "raw_input": raw, "locations": locations or []}}

    results, _ = attack.run(
        [
            perm("delete", {"paths": ["/etc/passwd"]}),
            perm("move", {"source": "/etc/passwd", "destination": "stolen.txt"}),
            perm("move", {"old_path": "a.txt", "new_path": "/tmp/x"}),
            perm("edit", {"file_path": "a.txt", "old_string": "../..", "new_string": "/etc"}),
            perm("execute", {"command": "/bin/ls ..", "cwd": "/"}),
            perm("edit", {"target_file": "../../outside.txt"}),
            perm("edit", {"changes": {"/etc/hosts": {"type": "update"}}}),
            perm("edit", {"file_path": "~/.bashrc"}),
            perm("edit", {"file_path": "lorch.json"}),
            perm("edit", None, [str(ws / ".git" / "config")]),
            perm("edit", {"file_path": str(ws / "reviews" / "T-1.json")}),
            perm("edit", {"changes": {str(ws / "src" / "a.py"): {"type": "update"}}}),
            perm("execute", {"command": ["bash", "-lc", "ls"], "cwd": str(ws)}),
            perm("read", {"path": "state/run.json"}),
        ]
    )
    assert [r["outcome"] for r in results] == [
        "reject",  # rawInput.paths outside
        "reject",  # rawInput.source outside
        "reject",  # rawInput.new_path outside
        "allow",  # content keys are not paths
        "reject",  # rawInput.cwd outside
        "reject",  # an unknown key with a path-like value
        "reject",  # a path-like mapping key outside
        "reject",  # ~
        "reject",  # lorch.json
        "reject",  # .git/
        "reject",  # the reviewer's verdict, asked by the builder
        "allow",  # a path-like key inside the workspace
        "allow",
        "reject",  # lorch's own state, even to read
    ]


def test_an_agent_cannot_run_a_terminal_in_lorch_s_folders(attack: Attack) -> None:
    (attack.workspace / ".git").mkdir()
    results, _ = attack.run(
        [
            {"terminal": ["touch", "made"], "cwd": ".git"},
            {"terminal": ["touch", "made"], "cwd": "state"},
            {"terminal": ["touch", "made"], "cwd": "/"},
        ]
    )
    assert [r["ok"] for r in results] == [False, False, False]
    assert not (attack.workspace / ".git" / "made").exists()


# -- lorch's own files (issue 22, point 5) ----------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("planted", ["receipts/T-0042", "logs/builder", "state", "transcripts"])
def test_lorch_s_own_folders_never_follow_a_planted_symlink(
    scenario: Any, lorch: Any, tmp_path: Path, planted: str
) -> None:
    # What an agent with the user's rights leaves behind: one of lorch's own
    # folders replaced with a symlink to a folder outside the workspace.
    ws = scenario("happy-path")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("user data\n")
    (outside / "keep.txt").chmod(0o640)
    (ws / planted).parent.mkdir(parents=True, exist_ok=True)
    (ws / planted).symlink_to(outside)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "symlink" in x]
    assert planted.split("/")[-1] in line, r.stderr
    assert sorted(os.listdir(outside)) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "user data\n"
    assert stat.S_IMODE((outside / "keep.txt").stat().st_mode) == 0o640


@pytest.mark.e2e
def test_lorch_s_own_files_replace_a_planted_symlink_never_write_through_it(
    scenario: Any, lorch: Any, tmp_path: Path
) -> None:
    ws = scenario("happy-path")
    victim = tmp_path / "victim.json"
    victim.write_text("user data\n")
    victim.chmod(0o640)
    (ws / "state").mkdir(exist_ok=True)
    (ws / "state" / "run.json").symlink_to(victim)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "user data\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640
    assert not (ws / "state" / "run.json").is_symlink()


def test_a_raw_input_too_deep_or_too_large_to_check_is_refused(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lorch.agents.acp.policy import Policy

    options = [
        SimpleNamespace(option_id="allow", kind="allow_once"),
        SimpleNamespace(option_id="reject", kind="reject_once"),
    ]
    policy = Policy(tmp_path, {})
    deep: Any = "a.txt"
    for _ in range(20):
        deep = {"x": deep}
    wide = {"items": [{"name": f"n{i}"} for i in range(2000)]}
    fine = {"file_path": "a.txt", "content": "see ../../etc and /usr/lib"}
    for raw, allowed in ((deep, False), (wide, False), (fine, True)):
        call = SimpleNamespace(kind="edit", locations=None, raw_input=raw)
        decision = policy.decide(call, options, "builder")
        assert decision.allowed is allowed, decision
    assert (
        "too large or too deep"
        in policy.decide(
            SimpleNamespace(kind="edit", locations=None, raw_input=deep), options
        ).reason
    )


def test_a_fifo_or_symlink_as_a_verdict_file_is_refused_without_blocking(tmp_path: Path) -> None:
    from lorch.agents.acp.events import VerdictError, artifacts, read_verdict

    ws = tmp_path / "ws"
    (ws / "reviews").mkdir(parents=True)
    os.mkfifo(ws / "reviews" / "T-1.json")  # opened blocking, this would hang the loop
    with pytest.raises(VerdictError, match=r"reviews/T-1.json: cannot read it: .*not a regular"):
        read_verdict(ws, "review", "T-1")
    os.unlink(ws / "reviews" / "T-1.json")
    (tmp_path / "outside.json").write_text('{"status": "approved"}')
    os.symlink(tmp_path / "outside.json", ws / "reviews" / "T-1.json")
    with pytest.raises(VerdictError, match=r"reviews/T-1.json: cannot read it: .*symlink"):
        read_verdict(ws, "review", "T-1")
    # Artifacts: a FIFO and a symlink the turn made are not hashed (nor waited on).
    os.mkfifo(ws / "pipe")
    arts, deleted = artifacts(ws, ["pipe", "reviews/T-1.json"])
    assert arts == [] and deleted == []
