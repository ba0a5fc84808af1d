"""The whole prediction path through real processes: gunicorn, Redis, a Celery worker."""

from __future__ import annotations

import base64

import pytest

from imgq.local.supervisor import Service
from tests.support.http import http, wait_for_job

pytestmark = pytest.mark.e2e

CAT_CLASSES = {281, 282, 283, 284, 285}
"""ImageNet indices of domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian Mau."""
ESPRESSO = 967


def test_cat_photo_posted_as_multipart_is_labelled_a_cat(
    api_server: str, predict_worker: Service, cat_jpeg: bytes
) -> None:
    response = http.post(
        f"{api_server}/jobs/predict",
        files={"image": ("cat.jpg", cat_jpeg, "image/jpeg")},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["Location"] == f"/jobs/{body['id']}"

    job = wait_for_job(api_server, body["id"])
    assert job["status"] == "succeeded", job
    assert job["type"] == "predict"
    assert job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    result = job["result"]
    assert result["model"] == "imagenet" and result["version"] == 1
    (predictions,) = result["predictions"]
    assert len(predictions) == 5
    assert predictions[0]["index"] in CAT_CLASSES
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)


def test_several_images_as_base64_json_come_back_in_request_order(
    api_server: str, predict_worker: Service, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    images = [base64.b64encode(b).decode() for b in (coffee_jpeg, cat_jpeg, coffee_jpeg)]
    response = http.post(
        f"{api_server}/jobs/predict", json={"images": images, "top_k": 2}, timeout=10
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(api_server, response.json()["id"])
    assert job["status"] == "succeeded", job
    first, second, third = job["result"]["predictions"]
    assert [len(first), len(second), len(third)] == [2, 2, 2]
    assert first[0]["index"] == ESPRESSO and first[0]["label"] == "espresso"
    assert second[0]["index"] in CAT_CLASSES
    # The same photo may run in another batch (another padded size): same labels, scores close.
    assert [p["index"] for p in third] == [p["index"] for p in first]
    assert [p["score"] for p in third] == pytest.approx([p["score"] for p in first], abs=1e-4)


def test_prefer_wait_answers_with_the_finished_job_in_one_round_trip(
    api_server: str, predict_worker: Service, cat_jpeg: bytes
) -> None:
    files = {"image": ("cat.jpg", cat_jpeg, "image/jpeg")}
    response = http.post(
        f"{api_server}/jobs/predict", files=files, headers={"Prefer": "wait=20"}, timeout=30
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded"
    assert job["result"]["predictions"][0][0]["index"] in CAT_CLASSES
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert response.headers["Preference-Applied"] == "wait=20"
    assert http.get(f"{api_server}/jobs/{job['id']}").json()["result"] == job["result"]


@pytest.mark.parametrize("prefer", ["wait=abc", "respond-async", "wait=nan", "wait=-5", ""])
def test_prefer_without_a_usable_wait_is_an_ordinary_202(
    api_server: str, predict_worker: Service, cat_jpeg: bytes, prefer: str
) -> None:
    files = {"image": ("cat.jpg", cat_jpeg, "image/jpeg")}
    response = http.post(f"{api_server}/jobs/predict", files=files, headers={"Prefer": prefer})
    assert response.status_code == 202, response.text
    assert "Preference-Applied" not in response.headers


def test_unknown_job_id_is_a_json_404(api_server: str) -> None:
    response = http.get(f"{api_server}/jobs/does-not-exist", timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_bad_image_is_rejected_before_queueing(api_server: str) -> None:
    response = http.post(
        f"{api_server}/jobs/predict",
        files={"image": ("x.jpg", b"not an image", "image/jpeg")},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"


def test_body_over_the_limit_is_a_json_413(api_server: str) -> None:
    response = http.post(
        f"{api_server}/jobs/predict",
        files={"image": ("big.jpg", b"\xff" * (33 * 1024 * 1024))},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_readiness_reports_redis(api_server: str) -> None:
    assert http.get(f"{api_server}/readyz", timeout=5).json() == {"status": "ready"}
    assert http.get(f"{api_server}/healthz", timeout=5).json() == {"status": "ok"}


def test_explained_prediction_returns_a_gradcam_overlay_for_the_top_class(
    api_server: str, predict_worker: Service, cat_jpeg: bytes
) -> None:
    body = {"images": [base64.b64encode(cat_jpeg).decode()], "explain": "gradcam", "top_k": 3}
    response = http.post(f"{api_server}/jobs/predict", json=body)
    assert response.status_code == 202, response.text
    job = wait_for_job(api_server, response.json()["id"])
    assert job["status"] == "succeeded", job
    (explanation,) = job["result"]["explanations"]
    top = job["result"]["predictions"][0][0]
    assert explanation["index"] == top["index"] in CAT_CLASSES
    png = http.get(f"{api_server}/jobs/{job['id']}/artifacts/{explanation['artifact']}")
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    missing = http.get(f"{api_server}/jobs/{job['id']}/artifacts/other.png")
    assert missing.status_code == 404
