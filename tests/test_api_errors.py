"""Bad requests get a JSON error with a stable code and the right 4xx, never a 500.

These use Flask's test client (request parsing and error shapes do not depend on the server)
against the real Redis of the session.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.app import create_app
from api.errors import server_error_response
from imgq.media_types import IMAGE_MEDIA_TYPES
from imgq.settings import Settings
from tests.support.http import credentials
from tests.support.images import jpeg_bytes


@pytest.fixture
def client(settings: Settings, tmp_path: Path) -> Iterator[FlaskClient]:
    app = create_app(
        settings.model_copy(update={"max_request_bytes": 2_000_000, "max_images_per_job": 3})
    )
    with app.test_client() as test_client:
        test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {credentials.keys['admin']}"
        yield test_client


@pytest.fixture
def small_jpeg() -> bytes:
    import numpy as np

    return jpeg_bytes(np.full((16, 16, 3), 128, np.uint8))


def _error(response: TestResponse) -> tuple[int, str]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return response.status_code, body["error"]["code"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": b"x", "content_type": "text/plain"}, (415, "unsupported_media_type")),
        ({"data": b"{not json", "content_type": "application/json"}, (400, "invalid_request")),
        ({"json": ["a", "list"]}, (400, "invalid_request")),
        ({"json": {}}, (422, "validation_error")),
        ({"json": {"images": []}}, (422, "validation_error")),
        ({"json": {"images": ["@@@"]}}, (400, "invalid_request")),
        ({"json": {"images": [_b64(b"GIF89a garbage")]}}, (400, "invalid_image")),
        ({"json": {"images": [""]}}, (400, "invalid_image")),
        ({"data": {}, "content_type": "multipart/form-data"}, (400, "invalid_request")),
    ],
)
def test_malformed_predict_requests(
    client: FlaskClient, kwargs: dict[str, object], expected: tuple[int, str]
) -> None:
    assert _error(client.post("/jobs/predict", **kwargs)) == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"top_k": 0}, (422, "validation_error")),
        ({"top_k": 100000}, (422, "validation_error")),
        ({"top_k": "five"}, (422, "validation_error")),
        ({"top_k": 2.5}, (422, "validation_error")),  # not truncated to 2
        ({"top_k": 3.0}, (422, "validation_error")),
        ({"top_k": True}, (422, "validation_error")),
        ({"version": 1.9}, (422, "validation_error")),
        ({"surprise": 1}, (422, "validation_error")),
        ({"model": "no-such-model"}, (404, "model_not_found")),
        ({"model": "../../etc"}, (422, "validation_error")),
        ({"version": 99}, (404, "version_not_found")),
    ],
)
def test_bad_options_are_rejected(
    client: FlaskClient,
    small_jpeg: bytes,
    options: dict[str, object],
    expected: tuple[int, str],
) -> None:
    response = client.post("/jobs/predict", json={"images": [_b64(small_jpeg)], **options})
    assert _error(response) == expected


def test_form_values_are_strings_and_whole_numbers_still_parse(
    client: FlaskClient, small_jpeg: bytes
) -> None:
    def post(top_k: str) -> TestResponse:
        form = {"image": (io.BytesIO(small_jpeg), "a.jpg"), "top_k": top_k}
        return client.post("/jobs/predict", data=form, content_type="multipart/form-data")

    assert post("3").status_code == 202
    assert _error(post("2.5")) == (422, "validation_error")


DEEP_JSON = b"[" * 100_000
"""Nested far past Python's recursion limit: ``json`` raises RecursionError, not ValueError."""


@pytest.mark.parametrize("path", ["/jobs/predict", "/models/imagenet/versions/1/exports"])
def test_json_nested_too_deeply_is_invalid_request(client: FlaskClient, path: str) -> None:
    response = client.post(path, data=DEEP_JSON, content_type="application/json")
    assert _error(response) == (400, "invalid_request")
    assert "nests too deeply" in response.get_json()["error"]["message"]


def test_a_recursion_error_outside_json_parsing_stays_a_500(settings: Settings) -> None:
    app = create_app(settings)

    def countdown(depth: int) -> int:
        return countdown(depth + 1) + 1

    app.add_url_rule("/recurse", "recurse", lambda: str(countdown(0)))
    response = app.test_client().get(
        "/recurse", headers={"Authorization": f"Bearer {credentials.keys['admin']}"}
    )
    assert _error(response) == (500, "internal_error")


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (414, "URI Too Long", "uri_too_long"),
        (431, "Request Header Fields Too Large", "headers_too_large"),
        (400, "Bad Request", "invalid_request"),
        (403, "Forbidden", "forbidden"),
    ],
)
def test_the_servers_own_errors_are_json_envelopes(status: int, reason: str, code: str) -> None:
    raw = server_error_response(status, reason, "Request Line is too large (5000 > 4094)")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == f"HTTP/1.1 {status} {reason}"
    assert "Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}" in lines
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["details"] == {"reason": "Request Line is too large (5000 > 4094)"}


def test_the_servers_own_500_leaks_no_detail() -> None:
    body = server_error_response(500, "Internal Server Error", "secret").partition(b"\r\n\r\n")[2]
    assert json.loads(body) == {
        "error": {"code": "internal_error", "message": "An unexpected error occurred."}
    }


def test_too_many_images(client: FlaskClient, small_jpeg: bytes) -> None:
    response = client.post("/jobs/predict", json={"images": [_b64(small_jpeg)] * 4})
    assert _error(response) == (400, "too_many_images")


def test_oversized_body_is_413(client: FlaskClient) -> None:
    response = client.post("/jobs/predict", data=b"[" * 2_100_000, content_type="application/json")
    assert _error(response) == (413, "payload_too_large")


def test_unexpected_file_part_is_named(client: FlaskClient, small_jpeg: bytes) -> None:
    response = client.post(
        "/jobs/predict",
        data={"photo": (io.BytesIO(small_jpeg), "a.jpg")},
        content_type="multipart/form-data",
    )
    status, code = _error(response)
    assert (status, code) == (400, "invalid_request")
    assert "photo" in response.get_json()["error"]["message"]


def test_second_bad_image_is_reported_by_index(client: FlaskClient, small_jpeg: bytes) -> None:
    response = client.post(
        "/jobs/predict", json={"images": [_b64(small_jpeg), _b64(small_jpeg[:40])]}
    )
    assert _error(response) == (400, "invalid_image")
    assert response.get_json()["error"]["details"]["image"] == 1


def test_unknown_route_and_method(client: FlaskClient) -> None:
    assert _error(client.get("/nope")) == (404, "not_found")
    assert _error(client.put("/jobs/predict")) == (405, "method_not_allowed")


def test_openapi_document_is_served(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert "/jobs/predict" in spec["paths"]
    content = spec["paths"]["/jobs/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json", *IMAGE_MEDIA_TYPES}
    query = {p["name"] for p in spec["paths"]["/jobs/predict"]["post"]["parameters"]}
    assert {"model", "version", "top_k", "callback_url"} <= query  # the raw-body form's options


def test_redis_down_is_a_503_with_retry_after(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    response = app.test_client().get("/readyz")
    assert _error(response) == (503, "service_unavailable")
    assert response.headers["Retry-After"]


def test_broker_down_is_a_503_and_leaves_no_job_behind(
    settings: Settings, small_jpeg: bytes
) -> None:
    dead_broker = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app = create_app(dead_broker)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {credentials.keys['alice']}"
    before = client.get("/jobs?limit=100").get_json()["jobs"]
    response = client.post(
        "/jobs/predict",
        json={"images": [_b64(small_jpeg)]},
        headers={"Idempotency-Key": "retry-me"},
    )
    assert _error(response) == (503, "service_unavailable")
    assert response.headers["Retry-After"]
    assert client.get("/jobs?limit=100").get_json()["jobs"] == before
    # The key was released with the job: once the broker is back, the retry is accepted.
    healthy = create_app(settings).test_client()
    healthy.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {credentials.keys['alice']}"
    retry = healthy.post(
        "/jobs/predict",
        json={"images": [_b64(small_jpeg)]},
        headers={"Idempotency-Key": "retry-me"},
    )
    assert retry.status_code == 202
