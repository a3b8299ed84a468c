"""The public HTTP surface: the one route table, the app mounted on the service (the legacy
routes' documentation, the API docs pages, the answer for every path or method no route takes).

`ROUTES` lists every public path: its methods, the form its body is (image, video, none),
whether the API key guards it, and who serves it (the mounted app, or BentoML itself: the
Python client's routes and the probes). Everything else is made from it: the legacy routes'
decorators (`app_route`), the Python client's routes (`ROUTES.path(...)` in `@bentoml.api`), the
guarded set and what counts as work (serving/access.py), the body limit of each path and the
client routes' upload policies (serving/edge.py `install`), the fallback's 405s and the probes
it knows. tests/test_routes.py fails if the server serves a route the table does not list, or
the table lists one it does not serve.

The legacy routes themselves are methods of the service (service.py); `finish_app` must run
after the service class is defined (BentoML re-registers class-method routes at the end of the
app when it decorates it).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Route, compile_path

from preprocessing import errors
from preprocessing.errors import InputError
from serving import __version__
from serving.errors import MethodNotAllowed, NotFound, ServiceError, error_response, unexpected
from serving.schemas import ErrorResponse

T = TypeVar("T", bound=BaseModel)

DESCRIPTION = """\
Is a face in this photo real or fake? Upload an image; every face in it is found, cut out and
judged by the served classifier, and the image is judged by its faces.

The routes under `/api/v1` keep the contract of the old Flask backend (fields, casing, error
shape `{"error", "error_code", "timestamp"}`). Errors of the client's making answer 4xx; a 5xx
is a fault of the server's own. The Python client (`bentoml.SyncHTTPClient`) uses the same
pipeline through `/detect`, `/detect_augmented`, `/health` and `/model_info` (see `/schema.json`).
"""


def make_app() -> FastAPI:
    """The app the service mounts at "/", with the legacy error shape for its own faults."""
    app = FastAPI(
        title="Deepfake detection API",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    return app


# Every error status a detect route answers with, for the OpenAPI spec (in the legacy shape).
ERROR_STATUSES: dict[int, str] = {
    400: "No file (MISSING_FILE), an empty file (EMPTY_FILE), a corrupt image, a malformed form",
    401: "API key missing or wrong (only when DEEPFAKE_API_KEY is set)",
    408: "The upload did not complete in time",
    413: "Upload over the byte limit, or image over the pixel limit",
    415: "Not an image in a supported format",
    422: "No face found in a photo (NO_FACE: by default on /api/v1/detect*; see require_face)",
    429: "Rate limited (RATE_LIMITED, only when DEEPFAKE_RATE_LIMITS is set), or too many video jobs of "
    "this client (JOB_QUOTA_EXCEEDED); see Retry-After",
    500: "A fault of the server's own",
    503: "At capacity (SERVICE_OVERLOADED), the model cannot serve (MODEL_UNAVAILABLE), or the video "
    "jobs' store cannot be reached (JOB_STORE_UNAVAILABLE); see Retry-After",
    504: "Not answered within the request timeout",
    507: "No room left to spool a video upload (INSUFFICIENT_STORAGE)",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in ERROR_STATUSES.items()
}
# A video job's status and cancel: no upload, so only the key, the id and the store can fail.
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such video job, or its result has expired (NOT_FOUND)"},
    **{status: ERROR_RESPONSES[status] for status in (401, 500, 503, 504)},
}


def form_body(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI request body of a multipart route: `file` plus the given text fields."""
    properties = {"file": {"type": "string", "format": "binary", "description": "The image (JPEG, PNG, ...)"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": {**properties, **fields}}
                }
            },
        }
    }


EXPLAIN = {
    "type": "boolean",
    "description": "true: a heatmap per face (Grad-CAM of the decision toward fake), a PNG laid over `box`",
}
FRAMES = {"type": "integer", "description": "frames sampled, evenly spaced (default 32; capped)"}
FPS = {"type": "number", "description": "frames sampled per second, instead of `frames`"}
REQUIRE_FACE = {
    "type": "boolean",
    "description": "true: a photo with no face is a 422 NO_FACE; false: a 200 with verdict no_face; "
    "default: DEEPFAKE_REQUIRE_FACE, else 422 on the /api/v1/detect routes and 200 on /detect, "
    "/detect_augmented",
}


FORM_FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "image": {"require_face": REQUIRE_FACE, "explain": EXPLAIN},
    "video": {"frames": FRAMES, "fps": FPS, "explain": EXPLAIN},
}


# ---- The route table -------------------------------------------------------------------------

Form = Literal["image", "video", "none"]
GET = ("GET", "HEAD")


@dataclass(frozen=True)
class PublicRoute:
    """One public route. `path` is a Starlette path template; `aliases` are other paths with
    the same facts (the old backend's trailing-slash variants). A route with a form is work:
    rate limited and counted in flight (serving/access.py)."""

    name: str
    path: str
    methods: tuple[str, ...]
    form: Form = "none"
    guarded: bool = False  # the API key, when one is set
    served_by: Literal["app", "bentoml"] = "app"
    aliases: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path, *self.aliases)

    @property
    def work(self) -> bool:
        return self.form != "none"


class RouteTable:
    def __init__(self, routes: Iterable[PublicRoute]) -> None:
        self.routes = {route.name: route for route in routes}
        self._patterns = [
            (compile_path(path)[0], route) for route in self.routes.values() for path in route.paths
        ]

    def __getitem__(self, name: str) -> PublicRoute:
        return self.routes[name]

    def __iter__(self) -> Any:
        return iter(self.routes.values())

    def path(self, name: str) -> str:
        return self.routes[name].path

    def matching(self, path: str) -> list[PublicRoute]:
        """The routes at `path` (any method)."""
        return [route for pattern, route in self._patterns if pattern.match(path)]

    def guarded(self, path: str) -> bool:
        """Whether the key guards `path` (for every method: a wrong method answers 401 first)."""
        return any(route.guarded for route in self.matching(path))

    def work(self, path: str) -> bool:
        return any(route.work for route in self.matching(path))

    def form(self, path: str) -> Form:
        """The form `path` takes ("none" for a path that takes no upload, or no route)."""
        return next((route.form for route in self.matching(path) if route.work), "none")

    def served_by(self, who: Literal["app", "bentoml"]) -> list[PublicRoute]:
        return [route for route in self.routes.values() if route.served_by == who]


JOB = "/api/v1/detect/video/jobs"
AUGMENTED = "/api/v1/detect/augmented"
POST = ("POST",)
KEY = {"guarded": True}
BENTOML = {"served_by": "bentoml"}
ROUTES = RouteTable(
    [
        # The old backend's routes (the mounted app; methods of the service).
        PublicRoute("detect", "/api/v1/detect/", POST, "image", **KEY, aliases=("/api/v1/detect",)),
        PublicRoute("augmented", AUGMENTED, POST, "image", **KEY, aliases=(AUGMENTED + "/",)),
        PublicRoute("video", "/api/v1/detect/video", POST, "video", **KEY),
        PublicRoute("job_submit", JOB, POST, "video", **KEY),
        PublicRoute("job_status", JOB + "/{job_id}", ("GET",), **KEY),
        PublicRoute("job_cancel", JOB + "/{job_id}", ("DELETE",), **KEY),
        PublicRoute("health", "/api/v1/detect/health", ("GET",)),
        PublicRoute("model_info", "/api/v1/model/info", ("GET",)),
        # The page and the API docs (the mounted app: serving/ui.py, finish_app below).
        PublicRoute("ui", "/ui/", GET),
        PublicRoute("ui_redirect", "/ui", GET),
        PublicRoute("ui_assets", "/ui/assets/{file:path}", GET),
        PublicRoute("docs", "/api/v1/docs", GET, aliases=("/",)),
        PublicRoute("docs_init", "/api/v1/docs/init.js", GET),
        PublicRoute("docs_assets", "/api/v1/docs/assets/{file:path}", GET),
        PublicRoute("docs_spec", "/docs.json", ("GET",)),
        # The Python client's routes (`@bentoml.api`; BentoML parses them, after the edge).
        PublicRoute("client_detect", "/detect", POST, "image", **KEY, **BENTOML),
        PublicRoute("client_augmented", "/detect_augmented", POST, "image", **KEY, **BENTOML),
        PublicRoute("client_video", "/detect_video", POST, "video", **KEY, **BENTOML),
        PublicRoute("client_health", "/health", POST, **BENTOML),
        PublicRoute("client_model_info", "/model_info", POST, **BENTOML),
        # BentoML's own: probes, metrics, the client's schema.
        *(
            PublicRoute(f"probe_{name}", f"/{name}", GET, **BENTOML)
            for name in ("livez", "healthz", "readyz", "metrics", "schema.json")
        ),
    ]
)  # fmt: skip


def app_route(app: FastAPI, name: str, **openapi: Any) -> Callable[[Any], Any]:
    """The decorator of a route the mounted app serves, from its row of the table: its path and
    aliases, its methods, its form's OpenAPI body and error answers; `openapi`: the rest (the
    response model, a summary, ...)."""
    route = ROUTES[name]
    if route.form != "none":
        body = form_body(FORM_FIELDS[route.form])
        openapi = {"openapi_extra": body, "responses": ERROR_RESPONSES, **openapi}

    def decorate(function: Any) -> Any:
        for alias in route.aliases:
            function = app.api_route(alias, methods=list(route.methods), include_in_schema=False)(function)
        return app.api_route(route.path, methods=list(route.methods), **openapi)(function)

    return decorate


def _template(path: str) -> str:
    """A Starlette template as a plain prefix ("/ui/assets/{file:path}" -> "/ui/assets")."""
    return re.sub(r"/\{[^}]*\}$", "", path)


async def answer(work: Awaitable[T], where: str) -> T | JSONResponse:
    """The route's result, or its error as the legacy answer (a 500 for faults of ours)."""
    try:
        return await work
    except (InputError, ServiceError) as exc:
        return error_response(exc, where)
    except Exception as exc:  # noqa: BLE001 - a fault of ours: logged, answered, never a dead worker
        return error_response(unexpected(exc, where), where)


async def answer_json(work: Awaitable[BaseModel], where: str, status: int = 200) -> Response:
    """`answer` for the mounted app's routes: the result as a JSON response (`status`), or the
    legacy answer of its error."""
    result = await answer(work, where)
    if isinstance(result, Response):
        return result
    return JSONResponse(result.model_dump(mode="json"), status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    error: ServiceError | InputError
    if exc.status_code == 405:
        error = MethodNotAllowed([m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m])
    elif exc.status_code == 404:
        error = NotFound()
    else:
        error = InputError(exc.status_code, "BAD_REQUEST", str(exc.detail))
    return error_response(error, f"{request.method} {request.url.path}")


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return error_response(errors.bad_request(f"Invalid request: {exc.errors()[:1]}"), request.url.path)


# The API docs: Swagger UI 5 (Swagger UI before 5 cannot read the OpenAPI 3.1 that FastAPI
# writes: "Unable to render this definition"), from the files the fastapi-offline package ships,
# served by this server: nothing is loaded from elsewhere, and no inline script, so that the
# page's Content-Security-Policy can say so. It may be framed from any origin: the old front
# end shows it in an iframe ("API Documentation").
DOCS_PATHS = ROUTES["docs"].paths
DOCS_ASSETS = _template(ROUTES.path("docs_assets"))
DOCS_INIT = ROUTES.path("docs_init")
SPEC_PATH = ROUTES.path("docs_spec")
DOCS_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
DOCS_HEADERS = {"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"}
_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{init}"></script>
</body>
</html>
"""
_DOCS_SCRIPT = """"use strict";
window.ui = SwaggerUIBundle({{
  url: {spec},
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
}});
"""


def swagger_ui_dir() -> Path:
    """Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css, favicon.png) as fastapi-offline
    ships them."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def finish_app(app: FastAPI, ui_api_origins: tuple[str, ...] = ()) -> None:
    """The page, the API docs and the fallback, after the service's own routes: call it once
    the service class is defined."""
    from serving.ui import add_ui

    ui = {"page": ROUTES.path("ui"), "redirect": ROUTES.path("ui_redirect")}
    add_ui(app, ui_api_origins, **ui, assets=_template(ROUTES.path("ui_assets")))
    others = [(path, set(route.methods)) for route in ROUTES.served_by("bentoml") for path in route.paths]
    add_docs_and_fallback(app, others)


def add_docs_and_fallback(app: FastAPI, other_routes: Iterable[tuple[str, set[str]]]) -> None:
    """The API docs (our spec, Swagger UI from a local copy), then the answer for every path no
    route takes: 405 where another method would do (for this app's routes and `other_routes`,
    the service's own routes that BentoML serves), else 404. Call it last."""
    assets = StaticFiles(directory=swagger_ui_dir())
    app.mount(DOCS_ASSETS, _WithHeaders(assets, {"X-Content-Type-Options": "nosniff"}), name="docs-assets")
    page = _DOCS_PAGE.format(title=html.escape(app.title), assets=DOCS_ASSETS, init=DOCS_INIT)
    script = _DOCS_SCRIPT.format(spec=json.dumps(SPEC_PATH))

    @app.get(SPEC_PATH, include_in_schema=False)
    async def openapi_spec() -> JSONResponse:
        return JSONResponse(app.openapi())

    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(page, headers=DOCS_HEADERS)

    async def swagger_ui_init() -> Response:
        return Response(script, media_type="text/javascript", headers=DOCS_HEADERS)

    for path in DOCS_PATHS:
        app.add_api_route(path, swagger_ui, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route(DOCS_INIT, swagger_ui_init, methods=["GET", "HEAD"], include_in_schema=False)

    # An ASGI object, not a function: Starlette then matches it for every method.
    app.router.routes.append(Route("/{path:path}", _Fallback(list(app.routes), other_routes)))


class _WithHeaders:
    """An ASGI app whose answers get `headers` added (the static assets)."""

    def __init__(self, app: Any, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Fallback:
    """The answer for a path no route took: 405 (with Allow) where another method would do,
    else 404."""

    METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

    def __init__(self, routes: list[Any], others: Iterable[tuple[str, set[str]]]) -> None:
        self.routes = routes
        self.others = [(path, set(methods)) for path, methods in others]

    def allowed(self, scope: dict[str, Any]) -> set[str]:
        allowed = {m for path, methods in self.others if path == scope["path"] for m in methods}
        for method in self.METHODS:  # only BaseRoute.matches: it works for every kind of route
            if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in self.routes):
                allowed.add(method)
        return allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        allowed = self.allowed(scope)
        error = MethodNotAllowed(sorted(allowed)) if allowed else NotFound()
        await error_response(error, f"{scope['method']} {scope['path']}")(scope, receive, send)
