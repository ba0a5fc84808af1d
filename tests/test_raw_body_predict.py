"""``POST /jobs/predict`` with the image as the whole body, and reading jobs back cheaply.

The raw-body form is the commonest call without multipart: ``Content-Type: image/jpeg`` (or
another served type) and the options in the query string. It goes through the same checks,
ownership and queue as the other forms, against the real gunicorn, Redis and worker.
"""

from __future__ import annotations

import pytest
import requests

from imgq.local.supervisor import Service
from tests.support.http import http, wait_for_job

pytestmark = pytest.mark.e2e

CAT_CLASSES = {281, 282, 283, 284, 285}
"""ImageNet indices of domestic cats."""


def _error(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_a_raw_jpeg_body_with_query_options_is_labelled_like_the_multipart_form(
    api_server: str, predict_worker: Service, cat_jpeg: bytes
) -> None:
    raw = http.post(
        f"{api_server}/jobs/predict?top_k=3&model=imagenet",
        data=cat_jpeg,
        headers={"Content-Type": "image/jpeg", "Prefer": "wait=20"},
        timeout=30,
    )
    form = http.post(
        f"{api_server}/jobs/predict",
        files={"image": ("cat.jpg", cat_jpeg, "image/jpeg")},
        data={"top_k": "3"},
        headers={"Prefer": "wait=20"},
        timeout=30,
    )

    assert raw.status_code == 200, raw.text
    assert raw.headers["Preference-Applied"] == "wait=20"
    job = raw.json()
    assert job["status"] == "succeeded" and job["type"] == "predict"
    (predictions,) = job["result"]["predictions"]
    assert len(predictions) == 3 and predictions[0]["index"] in CAT_CLASSES
    other = form.json() if form.status_code == 200 else wait_for_job(api_server, form.json()["id"])
    assert [p["index"] for p in other["result"]["predictions"][0]] == [
        p["index"] for p in predictions
    ]
    assert http.get(f"{api_server}/jobs/{job['id']}", timeout=10).json() == job


def test_a_raw_body_job_without_waiting_is_queued_and_read_back(
    api_server: str, predict_worker: Service, coffee_jpeg: bytes
) -> None:
    response = http.post(
        f"{api_server}/jobs/predict",
        data=coffee_jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=10,
    )

    assert response.status_code == 202, response.text
    job = wait_for_job(api_server, response.json()["id"])
    assert job["status"] == "succeeded"
    assert set(job) == {
        "id",
        "type",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "result",
        "error",
        "progress",
        "webhook",
    }
    assert job["error"] is None and job["progress"] is None and job["webhook"] is None


def test_raw_bodies_are_checked_like_every_other_form(api_server: str, cat_jpeg: bytes) -> None:
    def post(path: str, body: bytes, media_type: str = "image/jpeg") -> requests.Response:
        return http.post(
            f"{api_server}{path}", data=body, headers={"Content-Type": media_type}, timeout=10
        )

    assert _error(post("/jobs/predict", b"")) == (400, "invalid_request")
    assert _error(post("/jobs/predict", b"not an image at all", "image/png")) == (
        400,
        "invalid_image",
    )
    assert _error(post("/jobs/predict?top_k=zero", cat_jpeg))[0] == 422
    assert _error(post("/jobs/predict?model=nosuchmodel", cat_jpeg)) == (404, "model_not_found")
    assert _error(post("/jobs/predict", cat_jpeg, "image/x-unknown"))[0] == 415


def test_another_clients_model_is_not_found_through_the_raw_form_either(
    api_server: str, cat_jpeg: bytes
) -> None:
    response = http.as_client("bob").post(
        f"{api_server}/jobs/predict?model=imagenet&owner=alice",
        data=cat_jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=10,
    )

    assert _error(response) == (404, "model_not_found")
