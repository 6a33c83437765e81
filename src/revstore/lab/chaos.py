"""Fault injection while the writers run.

- ``kill-connections``: every interval, terminate the target's database sessions
  (PostgreSQL ``pg_terminate_backend`` on sessions named ``revstore`` in the target
  database; MariaDB/MySQL ``KILL`` on the target user's connections to the target
  database). Statements and COMMITs in flight die with them: the ops they carried are
  either retried by the Store, refused, or reported as AmbiguousCommit.
- ``kill-workers`` (with ``--processes``): every interval, ``kill -9`` one worker process
  and start a replacement. Its ops in flight are indeterminate.
- ``restart-db``: every interval, restart the database. PostgreSQL and MariaDB: the
  lab's own throwaway server (``--server``, see ``servers``) is stopped, alternately
  with a fast shutdown and a crash (PostgreSQL ``-m immediate``, MariaDB ``SIGKILL``),
  and started again on the same port after a pause; the writers, in the same
  processes, must find their way back by themselves. SQLite has no server: what
  restarts is every process that has the database open, ``kill -9`` in the middle of
  its writes, and new worker processes carry on.

The checks must still pass: an indeterminate op is resolved by the final state.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from revstore.config import backend_of
from revstore.lab.naive import APPLICATION_NAME as NAIVE_APPLICATION_NAME
from revstore.lab.naive import sqlalchemy_url
from revstore.lab.servers import MODES, ThrowawayServer
from revstore.lab.targets import ProcessTarget

CHAOS = ("kill-connections", "kill-workers", "restart-db")
RESTART_PAUSE = 0.5
"""Seconds a restarted server stays down (on top of its own stop and start times)."""
CHAOS_APPLICATION_NAME = "revstore-lab-chaos"

# Only sessions of the target database, never our own.
_PG_KILL = text(
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE application_name IN ('revstore', :naive) AND datname = current_database() "
    "AND pid <> pg_backend_pid()"
)
_MY_SESSIONS = text(
    "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
    "AND USER = SUBSTRING_INDEX(USER(), '@', 1) AND ID <> CONNECTION_ID()"
)


@dataclass(frozen=True, slots=True)
class ChaosEvent:
    t: float
    action: str
    detail: str
    count: int
    until: float | None = None
    """When the fault was over (a restarted server accepted connections again)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chaos_backend(db: str | None) -> str | None:
    """'postgresql' or 'mysql' when connections of ``db`` can be killed, else None."""
    backend = backend_of(db)
    return None if backend == "sqlite" else backend


class Chaos(threading.Thread):
    """Acts every ``interval`` seconds (with jitter) until stopped."""

    def __init__(self, interval: float, rng: random.Random, t0: float) -> None:
        super().__init__(name=f"lab-chaos-{type(self).__name__}", daemon=True)
        self.interval = interval
        self.rng = rng
        self.t0 = t0
        self.events: list[ChaosEvent] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval * self.rng.uniform(0.5, 1.5)):
            try:
                self.act()
            except Exception as exc:  # chaos failing must not end the run; it is reported
                self.record("error", f"{type(exc).__name__}: {exc}"[:200], 0)

    def act(self) -> None:
        raise NotImplementedError

    def record(
        self,
        action: str,
        detail: str,
        count: int,
        t: float | None = None,
        until: float | None = None,
    ) -> None:
        at = time.monotonic() - self.t0 if t is None else t
        self.events.append(ChaosEvent(at, action, detail, count, until))

    join_timeout = 10.0
    """How long ``halt`` waits for a round in progress to end."""

    def halt(self) -> None:
        if self._halt.is_set():
            return
        self._halt.set()
        if self.is_alive():
            self.join(self.join_timeout)
        self.close()

    def close(self) -> None:
        """Release resources."""

    @property
    def hits(self) -> int:
        return sum(e.count for e in self.events if e.action != "error")


class ConnectionKiller(Chaos):
    def __init__(self, db: str, interval: float, rng: random.Random, t0: float) -> None:
        super().__init__(interval, rng, t0)
        kind = chaos_backend(db)
        if kind is None:
            raise ValueError(
                "--chaos kill-connections needs a PostgreSQL or MariaDB/MySQL database "
                "(SQLite has no sessions to kill)"
            )
        self.kind = kind
        connect_args: dict[str, Any] = {}
        if kind == "postgresql":
            connect_args["application_name"] = CHAOS_APPLICATION_NAME
        self.engine = create_engine(
            sqlalchemy_url(db),
            isolation_level="AUTOCOMMIT",
            pool_size=1,
            pool_pre_ping=True,
            connect_args=connect_args,
        )

    def act(self) -> None:
        with self.engine.connect() as conn:
            if self.kind == "postgresql":
                n = int(conn.execute(_PG_KILL, {"naive": NAIVE_APPLICATION_NAME}).scalar() or 0)
            else:
                n = 0
                for (session,) in conn.execute(_MY_SESSIONS).all():
                    try:
                        conn.exec_driver_sql(f"KILL CONNECTION {int(session)}")
                        n += 1
                    except SQLAlchemyError:
                        pass  # the session ended by itself in between
        self.record("kill-connections", f"terminated {n} database session(s)", n)

    def close(self) -> None:
        self.engine.dispose()


class WorkerKiller(Chaos):
    def __init__(self, target: ProcessTarget, interval: float, rng: random.Random, t0: float):
        super().__init__(interval, rng, t0)
        self.target = target

    def act(self) -> None:
        name = self.target.kill_random_worker(self.rng)
        if name is not None:
            self.record("kill-workers", f"kill -9 worker {name}, started a replacement", 1)


class ServerRestarter(Chaos):
    """``restart-db`` on the lab's throwaway PostgreSQL / MariaDB server."""

    def __init__(
        self, server: ThrowawayServer, interval: float, rng: random.Random, t0: float
    ) -> None:
        super().__init__(interval, rng, t0)
        self.server = server
        # A round in progress must end before the final state is read: the server is
        # up again when halt() returns (a stop and a start are each bounded).
        self.join_timeout = 2 * server.timeout + 30
        self.rounds = 0

    def act(self) -> None:
        # Alternate a clean shutdown and a crash: the first tells sessions and closes
        # them, the second drops them mid-statement and makes the server recover from
        # its log, where only commits it had flushed may survive.
        mode = MODES[self.rounds % len(MODES)]
        self.rounds += 1
        t = time.monotonic() - self.t0
        down = self.server.restart(RESTART_PAUSE, mode)
        self.record(
            "restart-db",
            f"{self.server.kind} {mode} stop, up again after {down:.2f}s",
            1,
            t=t,
            until=t + down,
        )

    def close(self) -> None:
        # A failed round may have left the server down: the final state needs it.
        if not self.server.running:
            try:
                self.server.start()
            except Exception as exc:
                self.record("error", f"could not start the server again: {exc}"[:200], 0)


class WorkerRestarter(Chaos):
    """``restart-db`` on SQLite: ``kill -9`` every worker process, start new ones."""

    def __init__(self, target: ProcessTarget, interval: float, rng: random.Random, t0: float):
        super().__init__(interval, rng, t0)
        self.target = target

    def act(self) -> None:
        t = time.monotonic() - self.t0
        names = self.target.restart_workers()
        if names:
            self.record(
                "restart-db",
                f"kill -9 every writer process ({', '.join(names)}), new ones running",
                len(names),
                t=t,
                until=time.monotonic() - self.t0,
            )
