"""A TCP proxy in front of PostgreSQL or MariaDB that cuts a connection at its next
COMMIT, for tests of a connection lost *during* COMMIT (an ambiguous commit).

Two cuts, armed once each:
- ``reply``: the COMMIT reaches the server, which commits; its reply is dropped and
  both sockets closed. The client cannot tell that the write landed.
- ``request``: the COMMIT is never forwarded; both sockets are closed, so the server
  rolls the transaction back. The client cannot tell that it did not land.

The protocols are plain text on loopback (PostgreSQL with ``sslmode=disable``): a
COMMIT is a PostgreSQL query/parse message holding ``COMMIT\\0``, or a MySQL
COM_QUERY packet ending in ``\\x03COMMIT``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


def _is_commit(chunk: bytes) -> bool:
    return b"COMMIT\x00" in chunk or chunk.endswith(b"\x03COMMIT")


class CutProxy:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", int(parts.port or 0))
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
        query = parts.query
        if parts.scheme.startswith("postgres"):
            query = "&".join(q for q in (query, "sslmode=disable") if q)
        self.url = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
        self._lock = threading.Lock()
        self._armed: str | None = None
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode: str) -> None:
        """Cut the next COMMIT that goes through (``reply`` or ``request``)."""
        assert mode in ("reply", "request")
        with self._lock:
            self._armed = mode

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            cut = threading.Event()  # set: drop whatever the server sends next, then close
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _take(self, chunk: bytes) -> str | None:
        with self._lock:
            if self._armed is not None and _is_commit(chunk):
                mode, self._armed = self._armed, None
                self.cuts += 1
                return mode
        return None

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        while True:
            try:
                chunk = client.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                _close(client, server)
                return
            mode = self._take(chunk)
            if mode == "request":
                _close(client, server)
                return
            if mode == "reply":
                cut.set()  # before forwarding: the reply cannot overtake the flag
            try:
                server.sendall(chunk)
            except OSError:
                _close(client, server)
                return

    def _down(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        while True:
            try:
                chunk = server.recv(65536)
            except OSError:
                chunk = b""
            if not chunk or cut.is_set():
                # The server answered the COMMIT (it committed): the client never hears.
                _close(client, server)
                return
            try:
                client.sendall(chunk)
            except OSError:
                _close(client, server)
                return


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
