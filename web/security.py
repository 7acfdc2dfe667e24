"""What keeps `artnote review` a local page that only its user drives.

- HostCheck: the Host header must name this server (127.0.0.1:PORT, localhost:PORT, the
  --host given). A web page elsewhere that points its own domain at 127.0.0.1 (DNS
  rebinding) sends its own name as Host, and is refused before any route runs. A server
  bound to every address (0.0.0.0, ::) also answers any IP address with its port, such as
  its LAN address: rebinding needs a name, so names are still matched exactly.
- BodyLimit: a request body over the limit is answered 413 and never read whole.
- CSRF: a random cookie (SameSite=Lax, HttpOnly, set on GET) and, as a field of every
  form, a token derived from it; each POST must bring both, compared in constant time:
  another site's page can make the browser post, but can neither read the cookie nor
  know the token. A browser's Origin header, when sent, must be this server too. Lax,
  not Strict: with Strict, following a link to the page from elsewhere arrives without
  the cookie, mints a new one and so makes every open form's token stale; Lax withholds
  the cookie from cross-site POSTs anyway.
- Headers: a strict Content-Security-Policy (no inline script runs, even if some text
  were ever rendered unescaped), no framing, no referrer.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The largest valid edit fits: a description and an explanation of 20,000 characters each
# (artnote.corrections.TEXT_MAX), a CJK character taking 9 bytes once percent-encoded.
MAX_BODY = 512 * 1024
CSRF_FIELD = "csrf"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # "no-referrer" would make our own Origin "null"
    "cross-origin-resource-policy": "same-origin",
}


def normalise_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """Host header values to accept, lower case; 'name:80' also accepts plain 'name'."""
    out = set()
    for host in hosts:
        host = host.strip().lower()
        out.add(host)
        if host.endswith(":80"):
            out.add(host[:-3])
    return frozenset(out)


def ip_literal_host(host: str, port: int) -> bool:
    """Whether a Host header value is an IP address (IPv4, or IPv6 in brackets) with
    `port` (or without a port, when that is 80)."""
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and rest != f":{port}") or (not rest and port != 80):
            return False
    else:
        address, colon, given = host.rpartition(":")
        if not colon:
            address, given = host, "80"
        if given != str(port) or ":" in address:
            return False
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


class HostCheck:
    """Refuse (400) any request whose Host header is not one of `allowed`, port included.

    `any_ip_port`: a server bound to every address also answers any IP literal with this
    port (the machine's LAN addresses, which it cannot list reliably)."""

    def __init__(
        self, app: ASGIApp, allowed: Iterable[str], any_ip_port: int | None = None
    ) -> None:
        self.app = app
        self.allowed = normalise_hosts(allowed)
        self.any_ip_port = any_ip_port

    def accepts(self, host: str) -> bool:
        if host in self.allowed:
            return True
        return self.any_ip_port is not None and ip_literal_host(host, self.any_ip_port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = (Headers(scope=scope).get("host") or "").strip().lower()
            if not self.accepts(host):
                # The refused name is not echoed back: it is the requester's text.
                response = PlainTextResponse("refused: this server does not answer to that host")
                response.status_code = 400
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Read at most `limit` bytes of a request body; more is answered 413.

    A declared Content-Length over the limit is refused before anything is read; a body
    sent in chunks is read up to the limit, then handed on from memory."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (
            not (declared.isascii() and declared.isdigit()) or int(declared) > self.limit
        ):
            await _too_large(scope, receive, send, self.limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _too_large(scope, receive, send, self.limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = PlainTextResponse(
        f"request body too large (over {limit // 1024} KB)",
        status_code=413,
        headers={"connection": "close"},
    )
    await response(scope, receive, send)


class SecurityHeaders:
    """Add SECURITY_HEADERS to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class Csrf:
    """Double-submit token, bound to this server: a random cookie (set on GET) and, in each
    form of the page, an HMAC of it under a secret made at start. Cookies ignore ports,
    so another local server may see the cookie; without the secret it cannot make the
    form's token. A restart makes open pages' forms stale (403: reload)."""

    def __init__(self, cookie_name: str) -> None:
        self.cookie = cookie_name
        self._secret = secrets.token_bytes(32)

    def _sign(self, cookie: str) -> str:
        return hmac.new(self._secret, cookie.encode(), "sha256").hexdigest()

    def token(self, request: Request) -> tuple[str, str | None]:
        """The form token for this request, and the cookie to set first (None: it has one)."""
        found = request.cookies.get(self.cookie, "")
        if _TOKEN.fullmatch(found):
            return self._sign(found), None
        new = secrets.token_urlsafe(32)
        return self._sign(new), new

    def remember(self, response: Response, cookie: str) -> None:
        response.set_cookie(self.cookie, cookie, httponly=True, samesite="lax", path="/")

    def valid(self, request: Request, form_value: object) -> bool:
        cookie = request.cookies.get(self.cookie, "")
        if not isinstance(form_value, str) or not _TOKEN.fullmatch(cookie):
            return False
        return hmac.compare_digest(
            self._sign(cookie).encode(), form_value.encode("utf-8", "replace")
        )


def same_origin(request: Request) -> bool:
    """A browser's Origin header, when it sends one, must name this server's own host."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "").lower()
    return origin.lower() in (f"http://{host}", f"https://{host}")
