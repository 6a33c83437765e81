"""Throwaway database servers: a PostgreSQL or MariaDB server of the lab's own, in a
temporary folder on a free loopback port, that ``--chaos restart-db`` (and the tests)
may stop and start without disturbing any other client.

- PostgreSQL: ``initdb`` (trust authentication, user ``postgres``), then ``pg_ctl``
  with ``fsync=on``, listening on 127.0.0.1 and a unix socket in the folder.
- MariaDB: ``mariadb-install-db`` (root with an empty password), then ``mariadbd``
  with its defaults files ignored, InnoDB flushing its log at every commit.

Both refuse to run as root, so as root they run as the ``postgres`` / ``mysql`` OS user
(``runuser``, or mariadbd's own ``--user``). Every wait is bounded; ``cleanup`` (also
run by the context manager and, as a safety net, at interpreter exit) kills whatever
is left and removes the folder.

    with throwaway_server("postgresql") as server:
        store = Store(server.url)
        server.restart(pause=0.5)        # a fast shutdown, a pause, a start
        server.restart(mode="immediate") # a crash: the server recovers from its log
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

KINDS = ("postgresql", "mariadb")
MODES = ("fast", "immediate")
"""``fast``: a clean shutdown (sessions are told and closed, then a checkpoint);
``immediate``: a crash (PostgreSQL ``-m immediate``, MariaDB ``SIGKILL``): the next
start recovers from the write-ahead log."""

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """A throwaway server could not be created, started or stopped."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _which(*candidates: str) -> str | None:
    for c in candidates:
        if os.path.isabs(c) and os.access(c, os.X_OK):
            return c
        found = shutil.which(c)
        if found:
            return found
    return None


class ThrowawayServer:
    """A database server in a temporary folder. ``start`` creates it on first use."""

    kind: ClassVar[str] = "?"
    os_user: ClassVar[str] = "?"

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"revstore-{self.kind}-"))
        self.restarts = 0
        self._created = False
        self._running = False
        self._closed = False
        self._as_root = os.geteuid() == 0
        if self._as_root:
            # The server runs as its OS user: it must own the folder (mkdtemp made it 0700).
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        # A safety net: a run that dies without cleanup must not leave a server behind.
        atexit.register(self.cleanup)

    # ------------------------------------------------------------------ interface

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._closed:
            raise ServerError(f"the throwaway {self.kind} server was cleaned up")
        if self._running:
            return
        if not self._created:
            self._create()
            self._created = True
        self._start()
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if not self._running:
            return
        self._stop(mode)
        self._running = False

    def restart(self, pause: float = 0.5, mode: str = "fast") -> float:
        """Stop (``mode``), wait ``pause`` seconds, start again on the same port.
        Returns how long the server was down, in seconds."""
        down = time.monotonic()
        self.stop(mode)
        time.sleep(pause)
        self.start()
        self.restarts += 1
        return time.monotonic() - down

    def cleanup(self) -> None:
        """Kill the server if it runs, remove its folder. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.cleanup)
        try:
            if self._running:
                self._kill()
        except Exception:  # cleanup must go on: the folder still has to go
            pass
        self._running = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (for error messages)."""
        path = self._log_path()
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> ThrowawayServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ helpers

    def _create(self) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self, mode: str) -> None:
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError

    def _log_path(self) -> Path:
        raise NotImplementedError

    def _as_user(self, cmd: list[str]) -> list[str]:
        """``cmd`` run as the server's OS user when we are root (the servers refuse root)."""
        if not self._as_root:
            return cmd
        runuser = _which("runuser", "/usr/sbin/runuser", "/sbin/runuser")
        if runuser:
            return [runuser, "-u", self.os_user, "--", *cmd]
        return ["su", self.os_user, "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def _run(self, cmd: list[str], what: str, timeout: float | None = None) -> None:
        try:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{what}: no answer in {exc.timeout:.0f}s") from exc
        except OSError as exc:
            raise ServerError(f"{what}: {exc}") from exc
        if done.returncode != 0:
            out = (done.stdout + done.stderr).strip()[-1500:]
            raise ServerError(
                f"{what} failed (exit {done.returncode}): {out}\n{self.log_tail(1000)}"
            )

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        raise ServerError(f"{what}: not done in {self.timeout:.0f}s\n{self.log_tail(1000)}")


# ------------------------------------------------------------------ PostgreSQL


def postgres_bindir() -> Path:
    """The folder of ``initdb`` / ``pg_ctl``: $REVSTORE_PG_BINDIR, Debian's
    /usr/lib/postgresql/<newest>/bin, or the PATH."""
    env = os.environ.get("REVSTORE_PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServerError("initdb not found (install PostgreSQL or set REVSTORE_PG_BINDIR)")


class PostgresServer(ThrowawayServer):
    kind: ClassVar[str] = "postgresql"
    os_user: ClassVar[str] = "postgres"
    database: ClassVar[str] = "postgres"

    def __init__(self, timeout: float = 60.0) -> None:
        self.bindir = postgres_bindir()
        super().__init__(timeout)
        self.data = self.dir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _log_path(self) -> Path:
        return self.dir / "server.log"

    def _create(self) -> None:
        # initdb's own --no-sync only skips syncing the fresh cluster files; the server
        # runs with fsync=on, so an acknowledged commit survives a crash.
        self._run(
            self._as_user(
                [
                    str(self.bindir / "initdb"),
                    *("-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"),
                    "--no-sync",
                ]
            ),
            "initdb",
        )

    def _start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {shlex.quote(str(self.dir))}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=on",
                "-c max_connections=200",
            ]
        )
        self._run(
            self._as_user(
                [
                    str(self.bindir / "pg_ctl"),
                    *("-D", str(self.data), "-l", str(self._log_path())),
                    *("-o", options, "-w", "-t", str(int(self.timeout)), "start"),
                ]
            ),
            f"starting PostgreSQL on port {self.port}",
            timeout=self.timeout + 10,
        )

    def _stop(self, mode: str) -> None:
        self._run(
            self._as_user(
                [
                    str(self.bindir / "pg_ctl"),
                    *("-D", str(self.data), "-m", mode, "-w", "-t", str(int(self.timeout))),
                    "stop",
                ]
            ),
            f"stopping PostgreSQL ({mode})",
            timeout=self.timeout + 10,
        )

    def _kill(self) -> None:
        try:
            self._stop("immediate")
        except ServerError:
            # pg_ctl could not: kill the postmaster by the pid it wrote.
            pid_file = self.data / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().splitlines()[0])
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ MariaDB


class MariadbServer(ThrowawayServer):
    kind: ClassVar[str] = "mariadb"
    os_user: ClassVar[str] = "mysql"
    database: ClassVar[str] = "lab"

    def __init__(self, timeout: float = 60.0) -> None:
        install = _which("mariadb-install-db", "mysql_install_db")
        server = _which("mariadbd", "/usr/sbin/mariadbd", "mysqld", "/usr/sbin/mysqld")
        if install is None or server is None:
            raise ServerError("mariadb-install-db / mariadbd not found (install mariadb-server)")
        self.install, self.server = install, server
        super().__init__(timeout)
        self.data = self.dir / "data"
        # Its own temporary folder, not the machine's /tmp: servers made at the same
        # moment (parallel tests) share nothing.
        self.tmp = self.dir / "tmp"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{self.database}"

    def _log_path(self) -> Path:
        return self.dir / "error.log"

    def _user_args(self) -> list[str]:
        return [f"--user={self.os_user}"] if self._as_root else []

    def _create(self) -> None:
        self.tmp.mkdir(exist_ok=True)
        if self._as_root:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.tmp, entry.pw_uid, entry.pw_gid)
        install = [
            self.install,
            "--no-defaults",  # never the machine's my.cnf: its port, socket, datadir
            f"--datadir={self.data}",
            f"--tmpdir={self.tmp}",  # passed on to the bootstrapping server
            *self._user_args(),
            "--auth-root-authentication-method=normal",  # root, empty password
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        try:
            self._run(install, "mariadb-install-db")
        except ServerError as first:
            # Seen once in CI under two parallel bootstraps ("Unknown table
            # 'mysql.tmp_user_sys'"): a fresh folder, once more, before giving up.
            log.warning("mariadb-install-db failed, trying once more: %s", first)
            shutil.rmtree(self.data, ignore_errors=True)
            self._run(install, "mariadb-install-db")

    def _start(self) -> None:
        log = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self._process = subprocess.Popen(
                [
                    self.server,
                    "--no-defaults",
                    f"--datadir={self.data}",
                    f"--tmpdir={self.tmp}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--socket={self.dir / 'mariadbd.sock'}",
                    f"--pid-file={self.dir / 'mariadbd.pid'}",
                    f"--log-error={self._log_path()}",
                    "--skip-name-resolve",
                    # Durable commits (the default, stated): the log is flushed at COMMIT.
                    "--innodb-flush-log-at-trx-commit=1",
                    "--innodb-buffer-pool-size=64M",
                    "--max-connections=300",
                    *self._user_args(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own session: a Ctrl-C meant for the lab does not reach the server.
                start_new_session=True,
            )
        finally:
            log.close()
        process = self._process

        def ready() -> bool:
            if process.poll() is not None:
                raise ServerError(
                    f"mariadbd exited with status {process.returncode}\n{self.log_tail(1500)}"
                )
            return self._query_ok()

        self._wait_until(ready, f"starting MariaDB on port {self.port}")
        self._query("CREATE DATABASE IF NOT EXISTS lab CHARACTER SET utf8mb4")

    def _connect(self) -> Any:
        import pymysql

        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", password="", connect_timeout=2
        )

    def _query_ok(self) -> bool:
        if not _accepts(self.port):
            return False
        try:
            self._query("SELECT 1")
        except Exception:
            return False
        return True

    def _query(self, sql: str) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def _stop(self, mode: str) -> None:
        process = self._process
        if process is None:
            return
        # SIGTERM is mariadbd's clean shutdown; SIGKILL a crash (InnoDB recovers).
        process.send_signal(signal.SIGTERM if mode == "fast" else signal.SIGKILL)
        try:
            process.wait(self.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise ServerError(f"mariadbd did not stop in {self.timeout:.0f}s; killed") from None
        finally:
            self._process = None

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self._process = None


_SERVERS: dict[str, type[ThrowawayServer]] = {
    "postgresql": PostgresServer,
    "postgres": PostgresServer,
    "mariadb": MariadbServer,
    "mysql": MariadbServer,
}


def throwaway_server(kind: str, timeout: float = 60.0) -> ThrowawayServer:
    """A new, not yet started, server of ``kind`` (postgresql or mariadb)."""
    cls = _SERVERS.get(kind.lower())
    if cls is None:
        raise ValueError(f"a throwaway server is postgresql or mariadb, not {kind!r}")
    return cls(timeout)
