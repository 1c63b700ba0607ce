"""Per-role containment of agent processes: bubblewrap on Linux (docs/security.md).

An agent is driven by a model reading untrusted text, so lorch assumes it may
do anything its process can. Under ``"sandbox": "bwrap"`` (what ``"auto"``
means wherever bubblewrap runs) every process lorch starts for a role — the
agent itself, the commands an ACP agent runs through ``terminal/*``, the task's
test command after an ACP builder turn — starts inside ``bwrap`` with this view:

- the whole file system read-only, as it is (``--ro-bind / /``); a fresh
  ``/dev``; its own PID namespace with its own ``/proc`` (no lorch, no other
  agent to read or signal); its own IPC and UTS namespaces; a private,
  empty ``/tmp`` (what the agent must run from under ``/tmp`` — lorch's own
  installation, its program — is bound back read-only); ``/run/user`` hidden
  (session bus, ssh/gpg agents: a way out of any sandbox);
- the workspace writable, except lorch's own paths (:data:`lorch.store.layout.LORCH_DIRS`
  hidden behind an empty read-only tmpfs, ``lorch.json`` unreadable) and
  ``.git/`` (read-only: git may look, hooks and config cannot be planted);
- the verdict directory of another role (:data:`lorch.store.layout.VERDICT_DIRS`)
  read-only: only the reviewer writes ``reviews/``, only the spec maintainer
  ``spec_notes/``;
- ``HOME`` a private directory of the role (``state/homes/<role>``, kept across
  restarts and runs), unless the role's ``env`` names a ``HOME``, which is then
  bound writable (the user chose it); ``TMPDIR`` is ``/tmp``;
- the network kept (agents call their model);
- ``--die-with-parent`` (it dies with lorch, its children with it: they are in
  its PID namespace) and ``--new-session`` (it cannot push keystrokes into
  lorch's terminal).

``--die-with-parent`` is the kernel's parent-death signal, which follows the
*thread* that started bwrap: lorch starts agents from its engine's thread and
the ACP loop's, which live as long as lorch (a short-lived thread must not).

The pid lorch records for a sandboxed agent is bwrap's: killing bwrap's group
ends the namespace and everything in it. A SIGTERM to it is then a SIGKILL to
the agent (bwrap does not forward signals): closing stdin stays the polite
way to stop one.

Whether bwrap can run is probed once per lorch process (:func:`probe`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lorch.store import layout
from lorch.store.layout import GIT_DIR, LORCH_DIRS, LORCH_FILES, VERDICT_DIRS
from lorch.wire.errors import ConfigError

MODES = ("auto", "bwrap", "none")
# Where each role's private HOME lives: inside state/, which no agent sees.
HOMES = layout.HOMES
TMP = "/tmp"
# Per-user runtime directories: the session bus (systemd-run --user would start a
# process outside any sandbox), ssh-agent, gpg-agent, keyrings.
HIDDEN_SYSTEM = ("/run/user",)
# Sockets that hand out more than the user has: the docker daemon is root.
HIDDEN_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock")

# The namespaces and process rules of every sandbox, probe included.
_FLAGS = (
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--die-with-parent",
    "--new-session",
)


@dataclass(frozen=True)
class Probe:
    """Whether bubblewrap can run here: its path, or why not."""

    bwrap: str | None
    why: str = ""


@cache
def probe() -> Probe:
    """Can this process start a sandbox? Asked once per process (a start costs ~ms)."""
    if not sys.platform.startswith("linux"):
        return Probe(None, f"bubblewrap is Linux only (this is {sys.platform})")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Probe(None, "bwrap is not on PATH (Debian/Ubuntu: apt install bubblewrap)")
    true = shutil.which("true") or "/bin/true"
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *_FLAGS, true]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Probe(None, f"{bwrap} cannot run: {e}")
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        said = lines[-1] if lines else f"exit {done.returncode}"
        return Probe(None, f"{bwrap} cannot make a sandbox here: {said}")
    return Probe(bwrap)


def resolve(role: str, mode: str) -> Probe:
    """What ``role`` gets for ``"sandbox": mode``: bwrap's path, or none and why.

    ``"bwrap"`` where bubblewrap cannot run is a ConfigError naming the role.
    """
    if mode == "none":
        return Probe(None, 'the role says "sandbox": "none"')
    found = probe()
    if found.bwrap is None and mode == "bwrap":
        raise ConfigError(
            f'lorch.json: $.agents.{role}.sandbox: "bwrap", but {found.why}; '
            'install bubblewrap, or set "auto" or "none"'
        )
    return found


class PrepareError(ConfigError):
    """A protected path of the workspace is not what lorch expects (a symlink, a file)."""


@dataclass(frozen=True)
class Sandbox:
    """One role's view of the machine under bubblewrap."""

    bwrap: str
    role: str
    workspace: Path  # resolved
    home: Path  # the HOME directory bound writable
    # Paths under /tmp the role's processes need, bound back read-only.
    readable: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        bwrap: str,
        role: str,
        workspace: Path,
        env: Mapping[str, str],
        own_home: bool,
        needs: Iterable[str] = (),
    ) -> Sandbox:
        """The sandbox of ``role``; ``env`` is the agent's environment (its PATH, HOME).

        ``own_home``: HOME is the role's private directory (else ``env["HOME"]``,
        which the role's configuration set). ``needs``: paths the command names
        (its program, its arguments), bound back read-only when under /tmp.
        """
        ws = Path(os.path.realpath(workspace))
        home = ws / HOMES / role if own_home else Path(os.path.realpath(env["HOME"]))
        wanted = [
            sys.prefix,
            sys.base_prefix,
            os.path.dirname(os.path.realpath(sys.executable)),
            *sys.path,
            *env.get("PATH", "").split(os.pathsep),
            *needs,
        ]
        return cls(bwrap, role, ws, home, _under_tmp(wanted, ws, home))

    def prepare(self) -> None:
        """Create what the sandbox mounts over, refusing a protected path that is not a directory.

        Run before each start: a path created later (``reviews/`` before the
        first review) is then already a mount point in every running sandbox,
        which an agent cannot rename, remove or replace by a symlink.
        """
        for name in (*LORCH_DIRS, *VERDICT_DIRS.values()):
            _ensure_dir(self.workspace, name)
        if self.home.parent == self.workspace / HOMES:
            _ensure_dir(self.workspace, HOMES.as_posix())
            _ensure_dir(self.workspace, (HOMES / self.role).as_posix())

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The agent's environment inside: HOME and TMPDIR as the sandbox has them."""
        return {**env, "HOME": str(self.home), "TMPDIR": TMP}

    def wrap(self, argv: list[str], cwd: Path | None = None) -> list[str]:
        """``argv`` as the command that runs it in this sandbox (in ``cwd``, if given)."""
        ws = str(self.workspace)
        args = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        args += ["--tmpfs", TMP]
        for path in HIDDEN_SYSTEM:
            if os.path.isdir(path):
                args += ["--tmpfs", path]
        for path in HIDDEN_SOCKETS:
            if os.path.exists(path) and not os.path.islink(path):
                args += ["--ro-bind", "/dev/null", path]
        for path in self.readable:
            args += ["--ro-bind", path, path]
        args += ["--bind", ws, ws]
        for name in LORCH_DIRS:
            target = os.path.join(ws, name)
            args += ["--tmpfs", target]
            if self.home.parent == self.workspace / HOMES and name == HOMES.parts[0]:
                args += ["--bind", str(self.home), str(self.home)]
            args += ["--remount-ro", target]
        for name in LORCH_FILES:
            # Unreadable and unwritable (a device on a nodev mount): it names
            # every role's environment.
            target = os.path.join(ws, name)
            if os.path.isfile(target):
                args += ["--ro-bind", "/dev/null", target]
        git = os.path.join(ws, GIT_DIR)
        if os.path.lexists(git):
            args += ["--ro-bind", git, git]
        for owner, name in VERDICT_DIRS.items():
            if owner != self.role:
                target = os.path.join(ws, name)
                args += ["--ro-bind", target, target]
        if self.home.parent != self.workspace / HOMES and self.home.is_dir():
            args += ["--bind", str(self.home), str(self.home)]
        if cwd is not None:
            args += ["--chdir", os.path.realpath(cwd)]
        return [*args, *_FLAGS, "--", *argv]

    def describe(self) -> str:
        """One line for ``lorch doctor``: what this role's processes can reach."""
        others = [d for owner, d in VERDICT_DIRS.items() if owner != self.role]
        own = VERDICT_DIRS.get(self.role)
        parts = [
            "bwrap: file system read-only",
            "workspace writable"
            + (f" (its {own}/ too)" if own else "")
            + f" but lorch's own files hidden, .git/ and {'/, '.join(others)}/ read-only",
            f"HOME {self.home}",
            "private /tmp and PIDs",
            "network kept",
        ]
        return "; ".join(parts)


def _ensure_dir(ws: Path, rel: str) -> None:
    path = ws / rel
    try:
        os.mkdir(path, 0o700)
        # Synced as what it is, a directory, even while it stays empty (a home
        # nothing was written to): a crash state of the workspace has it so.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    except FileExistsError:
        pass
    except OSError as e:
        raise PrepareError(
            f"{path}: cannot create it for the agents' sandbox: {e.strerror}"
        ) from None
    if path.is_symlink() or not path.is_dir():
        raise PrepareError(
            f"{path}: expected a directory, found "
            + ("a symlink" if path.is_symlink() else "something else")
            + "; lorch does not sandbox agents around it (move it away, then resume)"
        )


def _under_tmp(paths: Iterable[str], ws: Path, home: Path) -> tuple[str, ...]:
    """The existing ``paths`` under /tmp, resolved, outermost first, none inside another.

    The workspace and HOME are bound writable anyway: nothing inside them is kept.
    """
    found: set[str] = set()
    for p in paths:
        if not p or not os.path.isabs(p):
            continue
        real = os.path.realpath(p)
        if not real.startswith(TMP + os.sep) or not os.path.exists(real):
            continue
        found.add(real)
    kept: list[str] = []
    for p in sorted(found, key=lambda s: (s.count(os.sep), s)):
        inside = [*kept, str(ws), str(home)]
        if not any(p == k or p.startswith(k + os.sep) for k in inside):
            kept.append(p)
    return tuple(kept)
