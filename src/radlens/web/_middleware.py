"""The outermost layer of the app (plain ASGI, no per-request overhead of ``BaseHTTPMiddleware``).

For every HTTP request it

- assigns a request id (a client's ``X-Request-ID`` is kept when it is a short safe token) and returns
  it in ``X-Request-ID``;
- adds security headers (a strict Content-Security-Policy: the page loads nothing from elsewhere);
- caps the request body: a ``Content-Length`` over the limit is refused at once with 413, and a body
  that grows past it while streaming stops being read (413 as well);
- turns an unexpected exception into a JSON 500 that carries the request id, logging only the
  exception type and the stack (never its message, which could quote user input);
- writes one access-log line per request as JSON: request id, method, the route *template* (e.g.
  ``/api/studies/{row}``, never the raw path or query string), status and duration in ms.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("radlens.web.access")
error_log = logging.getLogger("radlens.web.error")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Headers added to every response. The page is self-contained (no CDN, no inline script), so the CSP
#: can forbid everything that does not come from this origin; ``data:`` images carry heatmaps.
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class BodyTooLarge(HTTPException):
    """The request body is larger than allowed (an HTTPException, so FastAPI's body parsing re-raises it)."""

    def __init__(self, limit: int, what: str = "the request") -> None:
        super().__init__(413, detail=f"{what} is larger than the {_size(limit)} limit")
        self.limit = limit


def _size(limit: int) -> str:
    return f"{limit / 1024 / 1024:.3g} MB"


class ServiceMiddleware:
    """Request ids, security headers, body limits, JSON 500s and the JSON access log (see module doc).

    ``body_limit(path) -> (bytes, what)`` gives the largest body accepted for a request path, and the
    limit to state in the 413 message (the upload size a user chose, rather than the body with its
    multipart overhead).
    """

    def __init__(self, app: ASGIApp, body_limit: Callable[[str], tuple[int, int]]) -> None:
        self.app = app
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        state: dict[str, Any] = {"status": 500, "started": False}
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(item for item in SECURITY_HEADERS if item[0] not in names)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        limit, stated = self.body_limit(scope.get("path", ""))
        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await _json(send_wrapper, 413, {"detail": BodyTooLarge(stated).detail})
            else:
                await self.app(scope, _limited(receive, limit, stated), send_wrapper)
        except BodyTooLarge as exc:  # raised while reading outside FastAPI's own body parsing
            if not state["started"]:
                await _json(send_wrapper, 413, {"detail": exc.detail})
        except Exception as exc:
            error_log.error(
                json.dumps(
                    {
                        "event": "unhandled_error",
                        "request_id": request_id,
                        "error": type(exc).__name__,
                        "stack": "".join(traceback.format_tb(exc.__traceback__)),
                    }
                )
            )
            if not state["started"]:
                await _json(send_wrapper, 500, {"detail": "internal server error", "request_id": request_id})
        finally:
            route = scope.get("route")
            access_log.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "route": _route_template(route, scope.get("path", "")),
                        "status": state["status"],
                        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                    }
                )
            )


def _route_template(route: Any, path: str) -> str:
    """The matched route's template; static files as one template; anything else "(no route)" — a raw
    path is never logged (a client can put any text in it)."""
    template = getattr(route, "path", None)
    if template and not path.startswith("/static/"):
        return str(template)
    return "/static/{file}" if path.startswith("/static/") else "(no route)"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SAFE_ID.match(text):
                return text
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _limited(receive: Receive, limit: int, stated: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once more than ``limit`` body bytes arrived."""
    received = 0

    async def wrapper() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(stated)
        return message

    return wrapper


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
