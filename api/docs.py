"""The interactive API docs at ``/docs``: Swagger UI over ``/openapi.json``, with no CDN.

flask-smorest renders the page itself (``OPENAPI_SWAGGER_UI_PATH``); it only needs to be told
where Swagger UI's scripts and stylesheet live. They come from the ``swagger-ui-bundle`` wheel and
are served here, so the page works on a network that reaches nothing but the API, and the
version of Swagger UI is pinned by the package like any other dependency. Only the files the
page loads are served: the wheel's own ``index.html`` and initializer point at the public
Petstore and are not ours to publish.

The page, its assets and ``/openapi.json`` answer without a key (``api.auth.OPEN_ENDPOINTS``):
Swagger UI reads the document before anyone has pressed "Authorize". The key typed there is
sent as ``Authorization: Bearer <key>`` with the requests made from the page
(``api.auth.BEARER_SCHEME``), and is kept only for the page's lifetime.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from imgq.errors import NotFound

DOCS_PATH = "docs"
"""Where the page is, relative to the OpenAPI prefix (``/``)."""

ASSETS_URL = f"{DOCS_PATH}/assets/"
"""Where the page finds Swagger UI's files. Relative to the page, so it still resolves when the
API is mounted under a path prefix (the page's URL sets the base)."""

ASSET_FILES = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui.css.map",
        "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.map",
        "swagger-ui-standalone-preset.js",
        "swagger-ui-standalone-preset.js.map",
    }
)
"""The files of the ``swagger-ui-bundle`` wheel the page loads (source maps for devtools)."""

ASSET_MAX_AGE_S = 86400
"""How long browsers may cache an asset: they change only when the package is upgraded."""

SWAGGER_UI_CONFIG: dict[str, Any] = {
    "validatorUrl": None,  # Swagger UI would otherwise send the document to swagger.io
    "deepLinking": True,  # an operation's URL can be shared
    "persistAuthorization": False,  # never write the key into the browser's local storage
    "displayRequestDuration": True,
}
"""Options of the page's ``SwaggerUIBundle(...)`` call."""

OPENAPI_DOCS_CONFIG: dict[str, Any] = {
    "OPENAPI_SWAGGER_UI_PATH": DOCS_PATH,
    "OPENAPI_SWAGGER_UI_URL": ASSETS_URL,
    "OPENAPI_SWAGGER_UI_CONFIG": SWAGGER_UI_CONFIG,
}
"""flask-smorest settings that turn its Swagger UI page on at ``/docs``."""

blp = Blueprint("docs", __name__, url_prefix=f"/{ASSETS_URL.rstrip('/')}")


@blp.route("/<string:file_name>")
def swagger_ui_asset(file_name: str) -> Response:
    """One of Swagger UI's files, from the installed ``swagger-ui-bundle`` package.

    Raises:
        NotFound: a name that is not one of ``ASSET_FILES``.
    """
    if file_name not in ASSET_FILES:
        raise NotFound(f"No docs asset {file_name!r}.", {"name": file_name})
    return send_from_directory(swagger_ui_path, file_name, max_age=ASSET_MAX_AGE_S)
