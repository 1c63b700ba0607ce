"""Writes to an agent's stdin never block lorch (issue 14, point 3)."""

from __future__ import annotations

import os

from lorch.agents.pipewriter import PipeWriter


def read_all(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out


def test_a_command_larger_than_the_pipe_to_a_reader_that_never_reads() -> None:
    r, w = os.pipe()
    writer = PipeWriter(w)
    big = b"x" * 200_000 + b"\n"
    # Returns although nobody reads (a blocking write would hang this test).
    assert writer.write(big) and writer.write(b"second\n")
    assert writer.pending > 0
    # When the reader reads, everything arrives, whole and in order.
    assert read_all(r, len(big) + 7) == big + b"second\n"
    writer.close()
    assert os.read(r, 1) == b""  # EOF
    os.close(r)


def test_closing_with_bytes_pending_ends_the_writer_thread() -> None:
    r, w = os.pipe()
    writer = PipeWriter(w)
    writer.write(b"y" * 300_000)
    thread = writer._thread
    assert thread is not None and thread.is_alive()
    writer.close()
    assert not thread.is_alive()
    assert not writer.write(b"more")
    os.close(r)


def test_a_reader_that_is_gone_breaks_the_pipe() -> None:
    r, w = os.pipe()
    os.close(r)
    writer = PipeWriter(w)
    assert not writer.write(b"hello\n")
    assert writer.broken
    writer.close()


def test_small_writes_need_no_thread() -> None:
    r, w = os.pipe()
    writer = PipeWriter(w)
    for i in range(100):
        assert writer.write(b"%d\n" % i)
    assert writer._thread is None and writer.pending == 0
    writer.close()
    assert read_all(r, 10_000) == b"".join(b"%d\n" % i for i in range(100))
    os.close(r)


def test_a_reader_that_dies_mid_command_breaks_the_pipe() -> None:
    r, w = os.pipe()
    writer = PipeWriter(w)
    writer.write(b"z" * 200_000)
    os.read(r, 1000)
    os.close(r)  # the agent is killed with most of the command unread
    thread = writer._thread
    assert thread is not None
    thread.join(timeout=30)
    assert writer.broken and not writer.write(b"again")
    writer.close()
