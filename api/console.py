"""The web console at ``/console``: jobs, models, training and drift as pages, not JSON.

The console is a handful of static files in ``api/console_files/`` (HTML, CSS and plain
JavaScript modules, no build step and nothing fetched from elsewhere), shipped in the package
like the code (``pyproject.toml``'s package data), so a wheel or the Docker image serves it
with nothing else installed. Everything the page shows comes from the public API, called from
the browser with the key the user signed in with; so the page and its files need no key
(``api.auth.OPEN_ENDPOINTS``), and every call the page makes does. The key lives in the tab's
``sessionStorage`` and travels as the bearer header only: never in a URL, never in a cookie,
so nothing here has to defend against cross-site requests riding on a cookie.

Every answer of this blueprint carries ``CONSOLE_CSP``: scripts, styles and fetches from this
origin only, no inline script or style, and images also from ``blob:`` and ``data:`` URLs (plots
and thumbnails are fetched with the bearer key and shown as blobs). The rest of the API answers
JSON and keeps its headers as they are. The routes are plain Flask, outside the OpenAPI
document, like Swagger UI's files in ``api.docs``.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

from imgq.errors import NotFound

CONSOLE_FILES = Path(__file__).with_name("console_files")
"""Where the page and its assets are, inside the installed ``api`` package."""

CONSOLE_PAGE = "index.html"
"""The one page; views are chosen by the URL's fragment (``#/jobs``), read by the script."""

CONSOLE_CSP = "default-src 'self'; img-src 'self' blob: data:"
"""The Content-Security-Policy of every console answer (the issue's policy, word for word)."""

blp = Blueprint("console", __name__, url_prefix="/console")


@blp.after_request
def _add_security_headers(response: Response) -> Response:
    """Put the console's policy on its page, its assets and its error answers."""
    response.headers["Content-Security-Policy"] = CONSOLE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"  # modules only as JavaScript
    return response


@blp.route("")
def console_page() -> Response:
    """The console's page; the browser revalidates it on every visit (no stale script)."""
    response = send_from_directory(CONSOLE_FILES, CONSOLE_PAGE)
    response.headers["Cache-Control"] = "no-cache"
    return response


@blp.route("/")
def console_slash() -> BaseResponse:
    """``/console/`` goes to ``/console``, where the page's relative asset URLs resolve.

    The location is relative, so it stays right when the API is mounted under a prefix.
    """
    return redirect("../console", code=308)


@blp.route("/assets/<path:file_name>")
def console_asset(file_name: str) -> Response:
    """A stylesheet or script of the page (revalidated by ETag, so an upgrade shows at once).

    Raises:
        NotFound: no such file among the console's assets (the page itself is not an asset).
    """
    path = CONSOLE_FILES / file_name
    if file_name == CONSOLE_PAGE or not path.is_file() or not _inside(path):
        raise NotFound(f"No console asset {file_name!r}.", {"name": file_name})
    response = send_from_directory(CONSOLE_FILES, file_name)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _inside(path: Path) -> bool:
    """Whether ``path`` resolves inside ``CONSOLE_FILES`` (``send_from_directory`` also checks;
    this keeps a ``..`` name from even being looked at)."""
    return path.resolve().is_relative_to(CONSOLE_FILES.resolve())
