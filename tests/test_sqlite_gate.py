"""SQLite's write gate (``backends/sqlite.WriteGate``): the write transactions of every
process on one file queue on an flock beside it instead of in SQLite's busy handler.

The gate only orders the queue; it never decides a write. A gate held by someone who
does not let go (a process stopped mid-transaction) costs a writer at most the busy
timeout, after which the write goes on to SQLite's own lock. Writers of several
processes and threads through the gate keep every invariant: the concurrency contract
suite runs through it on SQLite (``test_concurrency_contract``); here, its own cases.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
import time
from pathlib import Path

from revstore import Store
from revstore.backends.sqlite import WriteGate


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gate.db'}"


def test_the_gate_is_a_file_beside_the_database(tmp_path: Path) -> None:
    with Store(_url(tmp_path)) as s:
        s.put("r", {"v": 1})
        assert (tmp_path / "gate.db-revstore-gate").exists()


def test_a_gate_held_elsewhere_costs_a_writer_at_most_the_busy_timeout(tmp_path: Path) -> None:
    s = Store(_url(tmp_path))
    s.backend.dialect.busy_timeout_ms = 300  # the gate's bound: this test's wait
    s.put("r", {"v": 0})
    # Another open file of the gate: a holder that never lets go (a stopped process).
    holder = os.open(tmp_path / "gate.db-revstore-gate", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    done: list[object] = []
    try:
        writers = [
            threading.Thread(target=lambda k=k: done.append(s.put(f"w{k}", {"k": k})))
            for k in range(4)
        ]
        for t in writers:
            t.start()
        for t in writers:
            t.join(30)
        assert len(done) == 4, "a writer hung on the held gate"
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    # Released: the gate works again, and the writer that gave up on it left no lock.
    assert s.put("r", {"v": 1}).revision == 2
    s.close()


def test_a_transaction_inside_its_threads_gate_passes_through(tmp_path: Path) -> None:
    # A batch's leader holds the gate around the batch's transactions (group commit's
    # ``lead_within``): they must not wait for it again, nor let it go early.
    gate = WriteGate(str(tmp_path / "g-revstore-gate"))
    other = os.open(tmp_path / "g-revstore-gate", os.O_RDWR | os.O_CREAT)
    try:
        with gate.held(5):
            started = time.monotonic()
            with gate.held(4):
                pass
            # Not a speed claim: a gate waited for would have cost the 4 s bound.
            assert time.monotonic() - started < 2, "the inner transaction waited for its own gate"
            # Still held by this thread after the inner one ended.
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the inner transaction let the gate go")
            except BlockingIOError:
                pass
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the outer ends
        fcntl.flock(other, fcntl.LOCK_UN)
    finally:
        os.close(other)


def test_a_gate_in_a_read_only_directory_is_left_out(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root writes anyway: nothing to test here
            return
        assert WriteGate.beside(str(ro / "x.db")) is None
    finally:
        ro.chmod(0o755)


def _child_tries(gate: WriteGate, parent_fd: int) -> None:
    fd = gate._file()
    assert fd != parent_fd, "the child uses its parent's open file"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os._exit(0)  # excluded while the parent holds the gate: right
    os._exit(3)


def test_a_forked_child_takes_the_gate_on_its_own_file(tmp_path: Path) -> None:
    """A child forked from a process that holds the gate opens the gate file anew: on
    the inherited open file its flock would succeed at once (the lock belongs to the
    open file, which parent and child would share), and exclude nobody."""
    with Store(_url(tmp_path)) as parent:
        parent.put("r", {"v": 0})
        gate = parent.backend.dialect.gate
        assert gate is not None
        with gate.held(5):
            parent_fd = gate._file()
            child = multiprocessing.get_context("fork").Process(
                target=_child_tries, args=(gate, parent_fd)
            )
            child.start()
            child.join(30)
        assert child.exitcode == 0


def test_a_writer_waiting_at_the_gate_holds_no_connection(tmp_path: Path) -> None:
    # A batch's leader holds the gate while it takes its batch, then needs a connection.
    # A writer outside batches (retention) that took the only pooled connection before
    # queueing at the gate would leave the leader none until one of them gave up.
    s = Store(_url(tmp_path), pool_size=1, max_overflow=0)
    s.backend.dialect.busy_timeout_ms = 60_000  # a give-up this test would notice
    s.put("r", {"v": 0})
    holder = os.open(tmp_path / "gate.db-revstore-gate", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process writing
    done = threading.Event()
    try:
        leader = threading.Thread(target=lambda: (s.put("x", {"v": 1}), done.set()), daemon=True)
        leader.start()  # leads its batch: holds the gate, waits for the flock
        time.sleep(0.3)
        writer = threading.Thread(
            target=lambda: s.set_retention("default", keep_last=5), daemon=True
        )
        writer.start()  # queues at the gate behind the leader
        time.sleep(0.3)
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    # Not a speed claim: with no connection to be had the put would wait 30-60 s.
    assert done.wait(20), "the batch's leader found no connection"
    writer.join(30)
    assert not writer.is_alive()
    assert s.get("x").revision == 1 and s.get_retention("default")[0].keep_last == 5
    s.close()
