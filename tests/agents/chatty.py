#!/usr/bin/env python3
"""An agent that talks while nobody asked it anything: plain Python, no lorch imports.

Usage: chatty.py ROLE GO DONE. It sends one heartbeat as it starts; once the file
GO exists it writes 512 KiB of valid
heartbeats to stdout and as much text to stderr (far more than a pipe holds),
then creates DONE. If lorch
stops reading its stdout, the writes block and DONE never appears. Then it
reads stdin until EOF and answers nothing.
"""

import json
import os
import sys
import time

ROLE, GO, DONE = sys.argv[1:4]


def beat(seq):
    return json.dumps(
        {
            "kind": "heartbeat",
            "agent": {"agent_type": ROLE, "agent_id": ROLE + "-chatty"},
            "seq": seq,
            "status": "ready",
            "pid": os.getpid(),
            "uptime_s": 0,
            "last_activity_at": "2026-01-01T00:00:00.000000Z",
        }
    )


# Its first heartbeat at once, as the protocol asks (lorch's preflight waits for it).
sys.stdout.write(beat(0) + "\n")
sys.stdout.flush()
# Polling a file the test creates: this agent has nothing else to wait on.
while not os.path.exists(GO):
    time.sleep(0.01)
line = (beat(0) + "\n").encode()
for seq in range((512 << 10) // len(line) + 1):
    sys.stdout.buffer.write((beat(seq) + "\n").encode())
    sys.stderr.write(f"still here ({seq})\n" + "." * len(line) + "\n")
sys.stdout.flush()
sys.stderr.flush()
with open(DONE, "w") as f:
    f.write("all written\n")
for _ in sys.stdin:
    pass
