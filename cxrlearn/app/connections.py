"""Serving the app: the port, and what one connection may cost (time and file descriptors).

`guard` and `BodyLimit` bound what a *request* may ask for; this module bounds what a
*connection* may hold, below HTTP's requests, where uvicorn (with h11) leaves it open:

- **A port in use** is found before anything is printed: `bind_port` binds the socket
  itself, and an address in use is one line that names `--port`, not a traceback after
  a link that opens whatever else listens there. uvicorn then serves on that socket.
- **Slow headers.** uvicorn closes a connection that sends nothing for `KEEP_ALIVE_S`
  after an answer, but a client that sends its request line and headers one byte every
  few seconds is waited for forever. `BoundedH11Protocol` gives every request head
  `HEAD_TIMEOUT_S` seconds, from the connection (or the previous answer) on; then it answers
  408 and closes. (A slow *body* is `guard.BodyLimit`'s: it answers 408 as JSON.)
- **Idle connections.** Each open connection holds a file descriptor, and a process has
  about 1,024: a thousand connections that never send a byte made `accept` fail and left
  `/api/health` unanswered for over a minute. So at most `MAX_CONNECTIONS` are kept: when
  one more arrives, the oldest *idle* ones (no request in progress) are closed to make room.
  A browser reopens a closed idle connection by itself; a request in progress is never
  cut. uvicorn's `limit_concurrency` answers 503 beyond `MAX_CONNECTIONS` busy ones.

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cxrlearn.errors import CxrlearnError

if TYPE_CHECKING:  # uvicorn is imported here anyway; the names are for the signatures
    import asyncio

    import uvicorn

__all__ = ["HEAD_TIMEOUT_S", "KEEP_ALIVE_S", "MAX_CONNECTIONS", "BoundedH11Protocol",
           "bind_port", "server_config"]

HEAD_TIMEOUT_S = 10.0
"""Seconds a client has to send a request's line and headers (a browser needs milliseconds)."""

KEEP_ALIVE_S = 5
"""Seconds an idle connection is kept open after an answer (uvicorn's default too)."""

MAX_CONNECTIONS = 128
"""Open connections kept at once; the oldest idle ones are closed beyond it. Far below the
usual 1,024 file descriptors of a process, far above the 6 a browser opens per site."""


class BoundedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head and a cap on idle
    connections (see the module docstring). uvicorn makes one per connection."""

    head_timeout: float = HEAD_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened = self.loop.time()
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since: Any = None
        self._make_room()
        self._wait_for_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._waiting_since:
            self._head_timer.cancel()  # a new request's head has arrived in full
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait_for_head()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def is_idle(self) -> bool:
        """No request in progress: nothing is lost if the connection is closed now."""
        return self.cycle is None or self.cycle.response_complete

    def _wait_for_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._waiting_since = self.cycle  # a different cycle later means a head was parsed
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.cycle is not self._waiting_since:
            return
        body = b"the request headers came too slowly\n"
        try:  # 408 when h11 allows an answer here, else just the close
            for event in (h11.Response(status_code=408, reason=b"Request Timeout", headers=[
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]),
                    h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            pass
        self.transport.close()

    def _make_room(self) -> None:
        """Close the oldest idle connections while more than `max_connections` are open."""
        excess = len(self.connections) - self.max_connections
        if excess <= 0:
            return
        idle = sorted((c for c in self.connections if c is not self
                       and isinstance(c, BoundedH11Protocol) and c.is_idle()
                       and not c.transport.is_closing()), key=lambda c: c.opened)
        for connection in idle[:excess]:
            connection.transport.close()


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port`, for uvicorn to serve on; checked before any URL is shown.

    Raises:
        CxrlearnError: The port is in use, or the address is not this machine's; one line
            that says which flag to change.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: a port left in TIME_WAIT by a server just stopped can be bound again;
    # one that another program listens on still cannot.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise CxrlearnError(f"port {port} is in use by another program; choose another "
                                f"with --port N (e.g. --port {port + 1 if port < 65535 else 8000})"
                                ) from None
        if e.errno == errno.EACCES:
            raise CxrlearnError(f"port {port} needs administrator rights on this system; "
                                "choose one above 1023 with --port N") from None
        raise CxrlearnError(f"cannot listen on {host}:{port} ({e.strerror}); check --host "
                            "and --port") from None
    return sock


def server_config(app: Any, log_level: str = "info", **options: Any) -> uvicorn.Config:
    """uvicorn's settings for the app, with the bounds of this module.

    Args:
        app: The ASGI app (`create_app(...)`).
        log_level: uvicorn's log level.
        **options: Other `uvicorn.Config` arguments (tests pass shorter bounds through
            a protocol subclass as `http=`).
    """
    import uvicorn

    settings: dict[str, Any] = {"http": BoundedH11Protocol, "timeout_keep_alive": KEEP_ALIVE_S,
                                "limit_concurrency": MAX_CONNECTIONS + 16,
                                "log_level": log_level, **options}
    return uvicorn.Config(app, **settings)
