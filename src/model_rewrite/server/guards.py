"""ASGI middleware guarding the web app against requests a visited web page or a careless client can send:
a Host header other than the server's own names (DNS rebinding), a state-changing request from another
origin or without `Content-Type: application/json` (cross-site requests), and oversized bodies."""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
__all__ = ["BodyLimit", "LOCAL_HOSTS", "SameOriginJSON", "TrustedHostMiddleware", "allowed_hosts"]


def allowed_hosts(host: str | None = None) -> list[str]:
    """The Host names the server answers: the loopback names, and `host` (the address it was started for;
    IPv6 in brackets). A wildcard address (0.0.0.0, ::) adds the machine's own name."""
    names = list(LOCAL_HOSTS)
    if host and host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    elif host in ("0.0.0.0", "::"):
        names += [socket.gethostname(), socket.getfqdn()]
    return list(dict.fromkeys(n.lower() for n in names))


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


class SameOriginJSON:
    """ASGI middleware: every POST, PUT, PATCH or DELETE must come from the server's own origin and say
    `Content-Type: application/json`, body or not.

    The origin is the `Origin` header, or the `Referer`'s when there is none; it must be `http://` + the
    request's Host (which TrustedHostMiddleware has checked). A request with neither header (curl, scripts)
    is not a browser's cross-site request and passes. A JSON content type cannot be sent across sites
    without a CORS preflight, which this app never grants, so the two checks together refuse every request
    a foreign page can make: 403 for a foreign origin, 415 for another content type."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGING_METHODS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        source = headers.get("origin") or headers.get("referer")
        if source is not None:
            parts = urlsplit(source) if source != "null" else None
            own = headers.get("host", "").lower()
            if parts is None or parts.scheme not in ("http", "https") or parts.netloc.lower() != own:
                which = "Origin" if "origin" in headers else "Referer"
                return await _error(403, f"refused a {scope['method']} from another site ({which}: {source[:100]}); "
                                         "changes are accepted only from this server's own page")(scope, receive, send)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return await _error(415, f"{scope['method']} requests must send 'Content-Type: application/json' "
                                     f"(got {ctype or 'none'!r}), even without a body")(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: answer 413 to request bodies over `limit` bytes, declared or streamed."""

    def __init__(self, app: Callable, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = _error(413, f"request body over {self.limit // (1024 * 1024)} MiB; masks are small PNGs at image "
                              "resolution")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        if declared is not None:
            return await self.app(scope, receive, send)
        body, more = b"", True  # no declared length: buffer with a limit, then replay
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.limit:
                return await too_big(scope, receive, send)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
