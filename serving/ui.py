"""The web page for people: `/ui/` (HTML), its assets under `/ui/assets/` (plain files from
serving/ui/, no build step, nothing fetched from elsewhere).

The page talks to the API of the origin it is served from, or to another named by `?api=`
(`/ui/?api=https://host:port`) if the operator allowed that origin (DEEPFAKE_UI_API_ORIGINS):
the page sends the API key a person types into it to the server it talks to, so a link to
this page naming someone else's server must not work. The Content-Security-Policy lets the
page connect to its own origin and exactly the allowed ones, whatever `?api=` says; the page
reads the allowed list from its `data-api-origins` attribute and says when `?api=` names
another. The same folder also works served as static files from any other origin
(index.html?api=...), where that server's headers apply (no attribute: any origin)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from serving.errors import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("deepfake")
UI_DIR = Path(__file__).parent / "ui"
NOSNIFF = ("X-Content-Type-Options", "nosniff")


def api_origin(value: str | None) -> str | None:
    """The origin (`scheme://host[:port]`) of an `?api=` value; None unless it is an http(s) URL
    with a host and nothing but an optional "/" after it."""
    if not value:
        return None
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if any(c in host for c in " ;,'\"") or not host.isascii():
        return None  # nothing that could end a CSP source expression
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def content_security_policy(connect_to: tuple[str, ...] = ()) -> str:
    """Nothing from outside: scripts and styles from this origin only (no inline script), images
    also as data: (heatmaps) and blob: (the chosen file), and requests to this origin plus
    `connect_to` (origins checked by `api_origin`)."""
    connect = " ".join(["'self'", *connect_to])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _headers(csp: str) -> dict[str, str]:
    return {"Content-Security-Policy": csp, NOSNIFF[0]: NOSNIFF[1], "Cache-Control": "no-cache"}


class _WithHeaders:
    """An ASGI app whose answers get `headers` added (for the static assets)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_ui(
    app: FastAPI,
    api_origins: tuple[str, ...] = (),
    *,
    page: str = "/ui/",
    redirect: str = "/ui",
    assets: str = "/ui/assets",
) -> None:
    """The page at `page` (`redirect` redirects there, keeping the query) and its assets under
    `assets` (the paths are the route table's: serving/routes.py); `api_origins`: the other API
    origins the page may talk to (each checked by `api_origin`). Call it before
    `add_docs_and_fallback`: the fallback route must stay last. Without the page's files (a
    Bento built without serving/ui/) the API serves without it."""
    if not (UI_DIR / "index.html").is_file():
        logger.warning("no web page: %s is missing; /ui is not served", UI_DIR / "index.html")
        return
    allowed = tuple(origin for origin in api_origins if api_origin(origin) == origin)
    html = (UI_DIR / "index.html").read_text(encoding="utf-8")
    html = html.replace("<html ", f'<html data-api-origins="{" ".join(allowed)}" ', 1)
    csp = content_security_policy(allowed)

    async def ui_page(request: Request) -> Response:
        return HTMLResponse(html, headers=_headers(csp))

    async def ui_redirect(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse(page + (f"?{query}" if query else ""), status_code=307)

    app.add_api_route(page, ui_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route(redirect, ui_redirect, methods=["GET", "HEAD"], include_in_schema=False)
    files = StaticFiles(directory=UI_DIR / "assets")
    app.mount(assets, _WithHeaders(files, _headers(content_security_policy())), name="ui-assets")
