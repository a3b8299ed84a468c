"""The one route table (serving/routes.py): what the server serves is what the table lists,
route for route and method for method, and what the table says of a route is what the server
does (the key, the body limit, the 405s). Route facts were kept in up to four places: a route
added to one of them and not the others went unguarded (the job routes answered without the key)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from serving.routes import ROUTES
from tests.inprocess import load_service, service_app

KEY = "routes-test-key"


def served(app: Any) -> set[tuple[str, str]]:
    """(path template, method) of every route the service's ASGI app can reach: BentoML's own,
    up to the mount of our app (which takes every path: what follows it is never reached), and
    our app's, its fallback excepted."""
    found: set[tuple[str, str]] = set()

    def ours(routes: list[Any]) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's include of the class-method routes
                ours(route.original_router.routes)
            elif isinstance(route, Mount):
                found.update((f"{route.path}/{{file:path}}", m) for m in ("GET", "HEAD"))
            elif isinstance(route, Route) and route.path == "/{path:path}":
                continue  # the fallback: 404 and 405 for everything no route takes
            else:
                found.update((route.path, method) for method in route.methods)

    for route in app.routes:
        if isinstance(route, Mount) and route.path == "":  # BentoML's PassiveMount of our app at "/"
            ours(route.app.routes)
            break
        found.update((route.path, method) for method in route.methods)
    else:
        pytest.fail("the service's app is not mounted")
    return found


def listed() -> set[tuple[str, str]]:
    return {(path, method) for route in ROUTES for path in route.paths for method in route.methods}


def test_every_route_served_is_in_the_table_and_every_route_in_the_table_is_served(served_tag: str) -> None:
    app = load_service({"DEEPFAKE_MODEL_TAG": served_tag}).DeepfakeDetector.to_asgi()
    assert served(app) == listed(), {
        "served, not in the table": sorted(served(app) - listed()),
        "in the table, not served": sorted(listed() - served(app)),
    }


@pytest.fixture(scope="module")
def keyed(served_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    env = {
        "DEEPFAKE_MODEL_TAG": served_tag,
        "DEEPFAKE_API_KEY": KEY,
        "DEEPFAKE_JOBS_DIR": str(tmp_path_factory.mktemp("routes-jobs")),
    }
    with service_app(env) as app:
        yield app


def example(path: str) -> str:
    return path.replace("{job_id}", "A" * 22).replace("{file:path}", "app.js")


@pytest.mark.parametrize("route", list(ROUTES), ids=lambda route: route.name)
def test_the_key_guards_exactly_the_routes_the_table_says(keyed: TestClient, route: Any) -> None:
    for path in route.paths:
        method = route.methods[0]
        answer = keyed.request(method, example(path))
        if route.guarded:
            assert answer.status_code == 401, (method, path, answer.status_code)
        else:
            assert answer.status_code != 401, (method, path, answer.text)


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r.served_by == "bentoml"], ids=lambda route: route.name
)
def test_another_method_on_a_route_bentoml_serves_is_a_405(app: TestClient, route: Any) -> None:
    other = "DELETE" if "POST" in route.methods else "POST"
    answer = app.request(other, route.path)
    assert answer.status_code == 405, answer.text
    assert set(answer.headers["allow"].replace(" ", "").split(",")) >= set(route.methods) - {"HEAD"}


def test_each_path_has_its_forms_body_limit(app: TestClient) -> None:
    """A declared body over the route's limit is a 413 before anything is read: images at the
    image limit, videos at the video limit, a route without an upload at a small JSON body."""
    from serving.settings import Settings

    settings = Settings()
    headers = {"content-type": "multipart/form-data; boundary=b"}
    for route in ROUTES:
        if "POST" not in route.methods:
            continue
        limit = {"image": settings.max_upload_bytes, "video": settings.video_max_bytes}.get(
            route.form, 64 * 1024
        )
        over = app.post(example(route.path), headers={**headers, "content-length": str(limit + 200 * 1024)})
        assert over.status_code == 413, (route.name, over.status_code)


@pytest.mark.parametrize("path", ["/api/v1/detect/video/jobs/ab%0Acd", "/api/v1/x%00y", "/%7F", "/detect%0D"])
def test_a_path_with_a_control_character_is_a_legacy_404(app: TestClient, path: str) -> None:
    """Such a path never reached our app (Starlette's mount stops at a newline): BentoML's router
    answered a plain-text 404 (found by tests/test_openapi_fuzz.py)."""
    for method in ("GET", "POST"):
        answer = app.request(method, path)
        assert answer.status_code == 404 and answer.json()["error_code"] == "NOT_FOUND", answer.text
