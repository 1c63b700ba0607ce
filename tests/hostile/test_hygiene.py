"""Issue 21's hygiene defects, each by a real agent process (or a real file) against the real lorch.

- What an agent says reaches the terminal escaped: no escape sequence, ``\\r``
  or bidi override is obeyed, and no line it writes looks like one of lorch's.
- A workspace file lorch reads back (``state/index.json``, receipts,
  ``state/run.json``) may hold anything: lorch rebuilds it or names it in one line.
- A ``builder.completed`` without a test status is a protocol error of its attempt.
- What an agent starts ends with it, even out of its process group
  (``setsid``); its pipe is not read from its grandchildren once it has exited.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from .conftest import Workspace, assert_clean_exit, terminal_events

pytestmark = pytest.mark.e2e

HAPPY = ["builder.completed", "review.completed:approved", "spec.no_changes_needed"]
# A terminal obeys these; shown escaped they are harmless (C0 but \n and \t, C1, bidi).
OBEYED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _lines_of_lorch(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.startswith(("[lorch]", "lorch:"))]


def test_an_agent_cannot_drive_the_terminal_or_forge_a_line(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({"builder": "terminal_escapes"})
    r = lorch("run", "-v", "--workspace", str(ws))
    assert_clean_exit(r)
    assert terminal_events(ws) == ["error", *HAPPY]
    for stream in (r.stdout, r.stderr):
        assert not OBEYED.search(stream), repr(OBEYED.search(stream))
    # Its progress, its error and its stderr (-v) were shown, escaped, on lines of their own.
    out = r.stdout
    assert "[builder] builder.progress done\\x0d[lorch] DONE\\x1b[2J\\x1b]0;pwned\\x07" in out
    assert "[builder] error crashed: done [lorch] DONE\\x1b[2J\\x1b]0;pwned" in out
    assert "[builder stderr] warming up\\x1b]0;title\\x07\\x0d[lorch] DONE\\x1b[H" in out
    assert "\\u202etxt.exe" in out
    # Its newline starts an indented line, never one of lorch's: one DONE, lorch's, last.
    assert "\n    [lorch] DONE\n" in out
    assert [line for line in out.split("\n") if "DONE" in line and line.startswith("[lorch]")] == [
        "[lorch] DONE"
    ]
    assert out.rstrip("\n").endswith("\n[lorch] DONE")
    # The transcript file says the same.
    (transcript,) = (ws / "transcripts").glob("run-*.txt")
    assert transcript.read_text() == "".join(
        line + "\n" for line in out.split("\n") if line and "stderr]" not in line
    )


def test_an_agent_s_auth_message_is_shown_escaped_in_lorch_s_last_line(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({"builder": "auth_escapes"})
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert not OBEYED.search(r.stderr) and not OBEYED.search(r.stdout)
    (last,) = _lines_of_lorch(r.stderr)
    assert last.startswith("lorch: ") and "\\x1b]0;pwned\\x07" in last
    assert "\n    [lorch] DONE" in r.stderr


def test_doctor_shows_an_agent_s_name_and_stderr_escaped(tmp_path: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    from lorch.scenarios import materialize

    ws = tmp_path / "ws"
    materialize("acp-exactly-once", ws)
    script = ws / "agents" / "builder.json"
    body = json.loads(script.read_text())
    body["agent"] = {"name": "evil\x1b]0;pwned\x07\r[lorch] DONE\u202e", "version": "1\n[lorch] ok"}
    script.unlink()
    script.write_text(json.dumps(body))
    cfg = json.loads((ws / "lorch.json").read_text())
    forged = "import sys; sys.stderr.write('boom\\x1b[2J\\r\\x07\\n'); sys.exit(4)"
    cfg["agents"]["spec_maintainer"]["cmd"] = [sys.executable, "-c", forged]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch("doctor", "--workspace", str(ws), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert not OBEYED.search(r.stdout), repr(r.stdout)
    assert "evil\\x1b]0;pwned\\x07\\x0d[lorch] DONE\\u202e 1\n    [lorch] ok" in r.stdout
    assert "its stderr said: boom\\x1b[2J\\x0d\\x07" in r.stdout
    assert _lines_of_lorch(r.stdout) == []
