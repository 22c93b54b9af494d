"""The safety layer in front of every route (an ASGI middleware, so it also covers the docs, the page, the
static files, server-sent events and 404s):

- HTTP Basic credentials when `--api-auth` gave any: every request, compared in constant time; a 401 with
  `WWW-Authenticate` otherwise. Credentials are never echoed.
- Cross-site requests cannot change state: a POST/PUT/PATCH/DELETE whose `Origin` is foreign or `null`, or
  whose `Sec-Fetch-Site` is `cross-site`, gets 403 (a page on another site cannot queue work). No CORS
  header is sent unless `--cors-allow-origin` names that origin.
- DNS rebinding: while bound to loopback, a `Host` that is not a loopback name gets 421.
- Request size: a body past the limit gets 413, by its Content-Length or as it streams in.
- Plain security headers on every answer (nosniff, no framing, no referrer, a same-origin CSP).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SafetyMiddleware", "parse_credentials", "LOOPBACK_HOSTS"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]  # fmt: skip


def parse_credentials(text: str | None) -> list[tuple[str, str]]:
    """`user:pass[,user2:pass2]` -> [(user, pass), …]; a ValueError that says the form, never the text."""
    if not text:
        return []
    pairs = []
    for part in text.split(","):
        user, sep, password = part.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError("--api-auth takes user:password pairs separated by commas (each non-empty)")
        pairs.append((user, password))
    return pairs


class _TooLarge(Exception):
    pass


class SafetyMiddleware:
    """Auth, origin, host and size checks around `app` (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        credentials: list[tuple[str, str]] | None = None,
        cors_origins: tuple[str, ...] = (),
        loopback_only: bool = True,
        max_body: int = 32 * 1024 * 1024,
    ) -> None:
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in (credentials or [])]
        self.cors_origins = tuple(o.rstrip("/") for o in cors_origins)
        self.loopback_only = loopback_only
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET").upper()
        origin = headers.get("origin")
        cors = origin.rstrip("/") if origin and origin.rstrip("/") in self.cors_origins else None
        refusal = self._refusal(headers, method, origin, cors)
        if refusal is not None:
            await _answer(send, *refusal, cors=cors)
            return
        if method == "OPTIONS" and cors is not None:  # a CORS preflight for an allowed origin
            await _answer(send, 204, "", cors=cors, extra=[
                (b"access-control-allow-methods", b"GET, POST, DELETE"),
                (b"access-control-allow-headers", b"authorization, content-type"),
            ])  # fmt: skip
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _answer(send, 413, self._too_large())
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *_HEADERS, *_cors_headers(cors)]
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not started:
                await _answer(send, 413, self._too_large())

    def _too_large(self) -> str:
        return f"the request body is over the server's limit of {self.max_body} bytes"

    def _refusal(
        self, headers: dict[str, str], method: str, origin: str | None, cors: str | None
    ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        if self.credentials and not self._authorised(headers.get("authorization", "")):
            return 401, "credentials needed (HTTP Basic)", [
                (b"www-authenticate", b'Basic realm="ddpm", charset="UTF-8"')
            ]
        host = headers.get("host", "")
        if self.loopback_only and _hostname(host) not in LOOPBACK_HOSTS:
            return 421, "this server answers loopback names only (127.0.0.1, localhost)", []
        if method in SAFE_METHODS:
            return None
        if headers.get("sec-fetch-site", "").lower() == "cross-site" and cors is None:
            return 403, "cross-site requests may not change state here", []
        if origin is not None and cors is None:
            if origin.strip().lower() == "null" or not _same_origin(origin, host):
                return 403, f"requests from origin {origin!r} may not change state here", []
        return None

    def _authorised(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for u, p in self.credentials:  # every pair compared, in constant time each
            ok |= hmac.compare_digest(u, user) & hmac.compare_digest(p, password) & bool(sep)
        return ok


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.strip().lower()


def _cors_headers(cors: str | None) -> list[tuple[bytes, bytes]]:
    if cors is None:
        return []
    return [(b"access-control-allow-origin", cors.encode("latin-1")), (b"vary", b"Origin")]


async def _answer(
    send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None,
    *, cors: str | None = None,
) -> None:
    body = b"" if status == 204 else json.dumps({"error": detail, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *_HEADERS, *(extra or []), *_cors_headers(cors)]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
