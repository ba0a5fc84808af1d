"""The ``/docs`` page, through the real gunicorn API: Swagger UI from the installed package.

Over HTTP: the page, every script and stylesheet it names (served here, from the
``swagger-ui-bundle`` wheel, never a CDN), the document its config points Swagger UI at, and the
bearer scheme the "Authorize" button is built from. In headless Chromium
(``tests.support.browser``): the page renders the operations from ``/openapi.json``, and a key
given to "Authorize" is what "Try it out" sends.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from playwright.sync_api import expect
from swagger_ui_bundle import swagger_ui_path

from tests.support.browser import chromium
from tests.support.http import credentials, http

pytestmark = pytest.mark.e2e

CONTENT_TYPES = {"script": "text/javascript", "stylesheet": "text/css"}
"""What each kind of asset must be served as (browsers refuse a script sent as anything else
when ``X-Content-Type-Options: nosniff`` is set, and a stylesheet always)."""


class _AssetLinks(HTMLParser):
    """The page's ``<script src>`` and ``<link rel=stylesheet href>``, and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[tuple[str, str]] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and named.get("src"):
            self.assets.append(("script", named["src"] or ""))
        elif tag == "script":
            self._in_inline_script = True
        elif tag == "link" and named.get("rel") == "stylesheet":
            self.assets.append(("stylesheet", named.get("href") or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts.append(data)


def _load_page(base_url: str) -> tuple[str, _AssetLinks]:
    page = requests.get(f"{base_url}/docs", timeout=10)  # no key: readers may have none yet
    assert page.status_code == 200, page.text
    assert page.headers["Content-Type"].startswith("text/html")
    links = _AssetLinks()
    links.feed(page.text)
    return page.url, links


def test_docs_page_loads_swagger_ui_from_the_api_itself(api_server: str) -> None:
    page_url, links = _load_page(api_server)
    assert {kind for kind, _ in links.assets} == {"script", "stylesheet"}
    for kind, reference in links.assets:
        url = urljoin(page_url, reference)
        assert urlsplit(url).netloc == urlsplit(api_server).netloc, url  # no CDN
        asset = requests.get(url, timeout=10)
        assert asset.status_code == 200, (url, asset.text[:200])
        assert asset.headers["Content-Type"].startswith(CONTENT_TYPES[kind]), url
        packaged = Path(swagger_ui_path) / Path(urlsplit(url).path).name
        assert asset.content == packaged.read_bytes()  # the wheel's file, as installed
    bundle = requests.get(urljoin(page_url, "docs/assets/swagger-ui-bundle.js"), timeout=10)
    assert "SwaggerUIBundle" in bundle.text


def test_docs_page_names_no_host_but_the_api(api_server: str) -> None:
    page = requests.get(f"{api_server}/docs", timeout=10)
    assert not re.findall(r"(?:https?:)?//[\w.-]+", page.text), "the page reaches another host"
    assert '"validatorUrl": null' in page.text  # Swagger UI would post the document to swagger.io


def test_docs_page_config_fetches_the_openapi_document(api_server: str) -> None:
    page_url, links = _load_page(api_server)
    script = "".join(links.inline_scripts)
    assert "SwaggerUIBundle(config)" in script
    spec_url = re.search(r"""\burl:\s*["']([^"']+)["']""", script)
    assert spec_url, script
    document_url = urljoin(page_url, spec_url.group(1))
    assert urlsplit(document_url).path == "/openapi.json"
    document = requests.get(document_url, timeout=10)  # as Swagger UI fetches it: no key yet
    assert document.status_code == 200
    spec = document.json()
    assert "/jobs/predict" in spec["paths"]
    assert not any(path.startswith("/docs") for path in spec["paths"])  # the page is no operation


def test_authorize_button_sends_the_key_as_a_bearer_token(api_server: str) -> None:
    spec = requests.get(f"{api_server}/openapi.json", timeout=10).json()
    schemes = spec["components"]["securitySchemes"]
    # Swagger UI draws "Authorize" from these: an http bearer scheme asks for the bare key.
    [(name, scheme)] = schemes.items()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert spec["security"] == [{name: []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []  # open operations say so
    # What the page then sends for "Try it out" on a protected operation:
    unauthorized = requests.get(f"{api_server}/models", timeout=10)
    assert unauthorized.status_code == 401
    authorized = requests.get(
        f"{api_server}/models", headers={"Authorization": f"Bearer {http.key}"}, timeout=10
    )
    assert authorized.status_code == 200, authorized.text


def test_only_swagger_ui_files_are_served_under_docs(api_server: str) -> None:
    for name in ("index.html", "swagger-initializer.js", "oauth2-redirect.html"):
        response = requests.get(f"{api_server}/docs/assets/{name}", timeout=10)
        assert response.status_code == 404, name  # the wheel's demo page points at Petstore
        assert response.json()["error"]["code"] == "not_found"


def test_swagger_ui_in_a_browser_renders_the_document_and_sends_the_authorized_key(
    api_server: str,
) -> None:
    with chromium() as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        requested: list[str] = []
        page.on("request", lambda sent: requested.append(sent.url))
        with page.expect_response(lambda answer: answer.url.endswith("/openapi.json")) as spec:
            page.goto(f"{api_server}/docs")
        assert spec.value.status == 200
        expect(
            page.locator(".opblock-summary-path", has_text="/jobs/predict").first
        ).to_be_visible()

        page.get_by_role("button", name="Authorize").first.click()
        page.locator(".auth-container input").first.fill(credentials.keys["alice"])
        page.locator(".auth-btn-wrapper").get_by_role("button", name="Authorize").click()
        page.get_by_role("button", name="Close").click()
        whoami = page.locator(
            ".opblock", has=page.locator(".opblock-summary-path", has_text="/whoami")
        )
        whoami.locator(".opblock-summary").click()
        whoami.get_by_role("button", name="Try it out").click()
        with page.expect_response(lambda answer: answer.url.endswith("/whoami")) as answer:
            whoami.get_by_role("button", name="Execute").click()

        assert answer.value.status == 200
        assert (
            answer.value.request.headers["authorization"] == f"Bearer {credentials.keys['alice']}"
        )
        assert answer.value.json()["client"] == "alice"
        expect(
            whoami.locator(".live-responses-table tr.response .response-col_status").first
        ).to_have_text("200")
        origin = urlsplit(api_server).netloc
        assert all(urlsplit(url).netloc == origin for url in requested if url.startswith("http"))
        assert errors == []
