"""What the app refuses before any endpoint runs, and the headers every answer carries.

The app runs on a student's machine, but a browser on that machine also visits other sites,
and a file may be sent by a program that does not play fair. Two ASGI middlewares, each a
wrapper around the app (an ASGI app is `async app(scope, receive, send)`; a middleware is
an app that calls the next one, here with its own `receive` or `send`), stand in front:

`Guard`, on every request:

- **Host check** (against DNS rebinding: a web page whose name is made to point at
  127.0.0.1 could otherwise call this app from the user's browser): only requests whose
  `Host` header names this server are answered, by default `localhost`, `127.0.0.1` and
  `[::1]`, plus the names given to `create_app(allowed_hosts=...)` or
  `cxrlearn app --allowed-host NAME`. Others get 400.
- **Origin check** (against cross-site requests): a POST whose `Origin` header is another
  site gets 403. Browsers send `Origin` with every cross-origin POST, and a multipart POST
  needs no CORS permission to be *sent*, only to be read. The app sends no CORS headers,
  so no other site may read any answer either.
- **Headers** on every answer: `X-Content-Type-Options: nosniff` (a browser never guesses a
  type), `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'` (no other page can frame
  this one), a `Content-Security-Policy` that lets the page load its own script, style,
  and `data:`/`blob:` images only, `Referrer-Policy: no-referrer`, and
  `Cross-Origin-Resource-Policy: same-origin`. Under the paths given as `wasm_paths` (the
  on-device page, `cxrlearn.app.device`) the policy also lets the page's own scripts compile
  WebAssembly (`'wasm-unsafe-eval'`): ONNX Runtime Web is WebAssembly. Nothing else changes
  there: still no inline script, no `eval`, nothing from another site.

`BodyLimit`, on the request body: a request that declares a `Content-Length` above the limit
is refused with 413 before a byte is read; otherwise the bytes are counted as they arrive,
and the request is refused with 413 as soon as they pass the limit. Without it, a chunked
upload (which declares no length) would be read, and stored, in full before any check.
It also gives the whole body `BODY_TIMEOUT_S` seconds to arrive: a client that sends one byte
every few seconds would otherwise hold a connection, and a request's memory, for hours.
A body cut short (too large, too slow) is answered with `Connection: close`, so that the
rest of it is never read. (A slow request *head* is `cxrlearn.app.connections`'.)

Lesson: lessons/07_app.ipynb
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BODY_TIMEOUT_S", "DEFAULT_HOSTS", "MULTIPART_SLACK", "SECURITY_HEADERS", "WASM_CSP",
           "BodyLimit", "Guard", "UploadTooLarge", "UploadTooSlow", "host_name", "too_large"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""The names of this machine a browser uses for a server on the loopback address."""

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
"""Added to every answer; see the module docstring for what each one prevents."""

WASM_CSP = (SECURITY_HEADERS["Content-Security-Policy"]
            + "; script-src 'self' 'wasm-unsafe-eval'")
"""The Content-Security-Policy under `Guard`'s `wasm_paths`: the same, and the page's own
scripts may compile WebAssembly."""

MULTIPART_SLACK = 64 * 1024
"""Room for the multipart envelope (boundary lines, part headers) around the file itself."""

BODY_TIMEOUT_S = 30.0
"""Seconds a request body may take to arrive: 10 MiB at 2.8 Mbit/s, a 2 MB X-ray at 0.6."""


def host_name(host: str) -> str:
    """The name part of a Host header, lower case: "LocalHost:8000" -> "localhost",
    "[::1]:8000" -> "[::1]"; a bare IPv6 address gets its brackets: "::1" -> "[::1]"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] or host
    if host.count(":") > 1:  # a bare IPv6 address, as a user might write it
        return f"[{host}]"
    return host.split(":", 1)[0]


def too_large(size: int | None, max_bytes: int) -> str:
    """The 413 message: the size (when known) and the limit, in units for people."""
    got = "" if size is None else f" ({_size(size)})"
    return (f"the upload is too large{got}; the limit is {_size(max_bytes)}. "
            "Send a smaller image (an X-ray needs no more than about 2000 x 2000 pixels)")


def _size(num_bytes: int) -> str:
    """1536 -> "1.5 KiB"."""
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} bytes"


async def _refuse(status: int, message: str, scope: Scope, receive: Receive,
                  send: Send, close: bool = False) -> None:
    """Answer `{"error": message}`; `close`: and end the connection (a body left unread)."""
    headers = {"Connection": "close"} if close else None
    await JSONResponse({"error": message}, status_code=status, headers=headers)(
        scope, receive, send)


class Guard:
    """Host check, Origin check and security headers; see the module docstring.

    Args:
        app: The ASGI app behind the guard.
        allowed_hosts: Names (or addresses) the server answers to, without port.
        wasm_paths: Path prefixes whose pages may compile WebAssembly (`WASM_CSP`).
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = DEFAULT_HOSTS,
                 wasm_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = sorted({host_name(h) for h in allowed_hosts})
        self.wasm_paths = tuple(wasm_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan events pass through
            await self.app(scope, receive, send)
            return

        wasm = bool(self.wasm_paths) and scope["path"].startswith(self.wasm_paths)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if wasm:
                    headers["Content-Security-Policy"] = WASM_CSP
            await send(message)

        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if host_name(host) not in self.allowed:
            # The name is the client's text: cut, and sent back as JSON, never as HTML.
            await _refuse(400, f"this server answers to {', '.join(self.allowed)}, not to "
                          f"the host {host[:100]!r}; if that name is meant to reach it, start "
                          "it with --allowed-host NAME", scope, receive, send_with_headers)
            return
        origin = headers.get("origin")
        if (scope["method"] not in SAFE_METHODS and origin is not None
                and urlsplit(origin).netloc.lower() != host.lower()):
            await _refuse(403, "cross-origin request refused: only this app's own page may "
                          "send to it", scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class UploadTooLarge(HTTPException):
    """Raised from `receive` when the body passes the limit. An HTTPException, because
    FastAPI re-raises those from its body parsing, and the app's handler answers 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large(None, max_bytes))


class UploadTooSlow(HTTPException):
    """Raised from `receive` when the body has not arrived in `timeout` seconds (408)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(408, f"the upload took longer than {timeout:g} s to arrive; check "
                              "the connection and send it again")


class BodyLimit:
    """Refuse request bodies larger than `max_bytes` plus the multipart envelope, counting
    the bytes as they arrive, or slower than `timeout` in all; see the module docstring.

    Args:
        app: The ASGI app behind the limit.
        max_bytes: Largest upload, in bytes (the file itself).
        slack: Room for the multipart envelope around the file.
        timeout: Seconds the whole body may take, from the first time the app asks for it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, slack: int = MULTIPART_SLACK,
                 timeout: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit = max_bytes + slack
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:  # refused before reading
            await _refuse(413, too_large(int(declared), self.max_bytes), scope, receive, send,
                          close=True)
            return
        received = 0
        started = False
        deadline: float | None = None  # set when the app first asks for the body
        complete = False  # the last part of the body has arrived: no deadline any more

        async def counting_receive() -> Message:
            nonlocal received, deadline, complete
            if complete:  # after the body: the app waits for a disconnect, as long as it likes
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                raise UploadTooSlow(self.timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # stop reading: the rest is never asked for
                    raise UploadTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except (UploadTooLarge, UploadTooSlow) as e:  # if no handler inside answered already
            if started:
                raise
            await _refuse(e.status_code, e.detail, scope, receive, send, close=True)
