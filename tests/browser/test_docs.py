"""The API docs (`/api/v1/docs` and `/`, serving/routes.py) in real headless Chromium: Swagger UI
renders the served OpenAPI 3.1 spec, with every operation and schema, from files the server
serves itself, opened directly and inside an iframe of another origin (the old front end's "API
Documentation" tab). What is expected is read from the spec the server serves (`/docs.json`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.inprocess import ThreadServer

# The operations a reader of the docs comes for (CONTRACT.md): detect, augmented, video.
ESSENTIAL = [
    ("post", "/api/v1/detect/"),
    ("post", "/api/v1/detect/augmented"),
    ("post", "/api/v1/detect/video"),
]
RENDER_TIMEOUT_S = 60.0


def served_spec(api: ThreadServer) -> dict[str, Any]:
    spec = api.get("/docs.json").json()
    assert spec["openapi"].startswith("3.1"), spec["openapi"]  # what Swagger UI before 5 cannot read
    return spec


def operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    methods = {"get", "post", "put", "patch", "delete"}
    return {(m, path) for path, item in spec["paths"].items() for m in item if m in methods}


# The "Schemas" section's entries (Swagger UI 5 shows an OpenAPI 3.1 spec's schemas as JSON
# Schema 2020-12), by their titles: the schema names.
SCHEMA_TITLES = (
    'return Array.from(document.querySelectorAll(\'.models article[data-json-schema-level="0"]'
    " > .json-schema-2020-12-head .json-schema-2020-12__title')).map(t => t.textContent.trim())"
)


def wait_for_render(driver: Any) -> None:
    """Until Swagger UI shows the operations and the schemas, or says it cannot render the spec."""
    from selenium.webdriver.support.ui import WebDriverWait

    def rendered(_: Any) -> bool:
        return bool(
            driver.execute_script(
                "return (document.querySelector('.opblock-summary-path') !== null"
                " && document.querySelector('.models article') !== null)"
                " || document.querySelector('.errors-wrapper') !== null"
                " || document.body.innerText.includes('Unable to render')"
            )
        )

    WebDriverWait(driver, RENDER_TIMEOUT_S, poll_frequency=0.1).until(rendered)


def shown(driver: Any) -> dict[str, Any]:
    """What the rendered page lists, read off the page."""
    listed = driver.execute_script(
        "return Array.from(document.querySelectorAll('.opblock')).map(b => ["
        " b.querySelector('.opblock-summary-method').textContent.trim().toLowerCase(),"
        " b.querySelector('.opblock-summary-path').getAttribute('data-path')])"
    )
    schemas = driver.execute_script(SCHEMA_TITLES)
    return {
        "operations": {(method, path) for method, path in listed},
        "schemas": set(schemas),
        "unable to render": "Unable to render" in driver.find_element("tag name", "body").text,
        "errors": driver.execute_script("return document.querySelectorAll('.errors-wrapper').length"),
    }


def expand(driver: Any, method: str, path: str) -> dict[str, Any]:
    """Open one operation; what its request body and responses show."""
    from selenium.webdriver.support.ui import WebDriverWait

    block = next(
        b
        for b in driver.find_elements("css selector", f".opblock.opblock-{method}")
        if b.find_element("css selector", ".opblock-summary-path").get_attribute("data-path") == path
    )
    driver.execute_script("arguments[0].scrollIntoView()", block)
    block.find_element("css selector", ".opblock-summary").click()
    WebDriverWait(driver, RENDER_TIMEOUT_S, poll_frequency=0.1).until(
        lambda _: block.find_elements("css selector", ".responses-table .response")
    )
    request_body = block.find_elements("css selector", ".opblock-section-request-body")
    return {
        "request body": request_body[0].text if request_body else "",
        "responses": {
            row.get_attribute("data-code")
            for row in block.find_elements("css selector", ".responses-table .response")
        },
    }


def foreign_resources(driver: Any, origin: str) -> list[str]:
    """Every resource the document loaded from anywhere but `origin`."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [name for name in names if not name.startswith(origin + "/")]


def check_rendered(driver: Any, api: ThreadServer) -> None:
    spec = served_spec(api)
    expected_ops = operations(spec)
    assert set(ESSENTIAL) <= expected_ops
    wait_for_render(driver)
    page = shown(driver)
    assert page == {
        "operations": expected_ops,
        "schemas": set(spec["components"]["schemas"]),
        "unable to render": False,
        "errors": 0,
    }
    for method, path in ESSENTIAL:
        opened = expand(driver, method, path)
        fields = spec["paths"][path][method]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert "multipart/form-data" in opened["request body"], (path, opened)
        assert all(name in opened["request body"] for name in fields["properties"]), (path, opened)
        assert opened["responses"] == set(spec["paths"][path][method]["responses"]), (path, opened)
    assert foreign_resources(driver, api.url) == []


def csp_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


@pytest.mark.parametrize("path", ["/api/v1/docs", "/"])
def test_docs_render_every_operation_and_schema(chrome: Any, legacy_api: ThreadServer, path: str) -> None:
    chrome.get_log("browser")  # only this page's messages below
    chrome.get(f"{legacy_api.url}{path}")
    check_rendered(chrome, legacy_api)
    assert csp_errors(chrome) == []


@pytest.mark.parametrize("path", ["/api/v1/docs", "/"])
def test_docs_render_in_a_frame_of_another_origin(
    chrome: Any, legacy_api: ThreadServer, page_origin: str, path: str
) -> None:
    """The old front end's "API Documentation" tab: an iframe on the docs from its own origin.
    A frame the server forbids (X-Frame-Options, frame-ancestors) stays empty."""
    assert page_origin != legacy_api.url
    chrome.get_log("browser")
    chrome.get(f"{page_origin}/docs-frame.html?src={quote(legacy_api.url + path, safe='')}")
    frame = chrome.find_element("id", "docs")
    chrome.switch_to.frame(frame)
    try:
        check_rendered(chrome, legacy_api)
    finally:
        chrome.switch_to.default_content()
    assert csp_errors(chrome) == []
