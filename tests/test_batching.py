"""Micro-batching: images queued together share forward passes, and every job still gets its
own result when a batch mixes jobs."""

from __future__ import annotations

import base64

import pytest

from imgq.local.supervisor import Service
from imgq.queueing import PREDICT_QUEUE, make_celery
from imgq.settings import Settings
from tests.support.http import http, wait_for_job
from tests.support.metrics import scrape

pytestmark = pytest.mark.e2e

CAT_CLASSES = {281, 282, 283, 284, 285}
ESPRESSO = 967
BATCHES = 'imgq_inference_batch_size_count{model="imagenet",owner="system"}'
IMAGES = 'imgq_inference_batch_size_sum{model="imagenet",owner="system"}'


def _submit(base: str, images: list[bytes]) -> str:
    body = {"images": [base64.b64encode(image).decode() for image in images], "top_k": 1}
    response = http.post(f"{base}/jobs/predict", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_queued_images_of_many_jobs_run_in_fewer_forward_passes_with_correct_results(
    api_server: str,
    predict_worker: Service,
    settings: Settings,
    cat_jpeg: bytes,
    coffee_jpeg: bytes,
) -> None:
    control = make_celery(settings).control
    before = scrape(settings.metrics_port)
    # Hold the worker off the queue so the images pile up as they would under load.
    assert control.cancel_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)
    try:
        expected: dict[str, list[str]] = {}
        for round_ in range(6):
            expected[_submit(api_server, [cat_jpeg])] = ["cat"]
            expected[_submit(api_server, [coffee_jpeg])] = ["coffee"]
            if round_ % 2 == 0:
                expected[_submit(api_server, [coffee_jpeg, cat_jpeg, coffee_jpeg])] = [
                    "coffee",
                    "cat",
                    "coffee",
                ]
    finally:
        assert control.add_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)

    for job_id, kinds in expected.items():
        job = wait_for_job(api_server, job_id)
        assert job["status"] == "succeeded", job
        tops = [predictions[0]["index"] for predictions in job["result"]["predictions"]]
        assert len(tops) == len(kinds)
        for kind, top in zip(kinds, tops, strict=True):
            assert (top in CAT_CLASSES) if kind == "cat" else (top == ESPRESSO), (job_id, tops)

    after = scrape(settings.metrics_port)
    images = after[IMAGES] - before.get(IMAGES, 0)
    passes = after[BATCHES] - before.get(BATCHES, 0)
    assert images == sum(len(kinds) for kinds in expected.values()) == 21
    assert passes < images / 2, f"{images} images ran in {passes} forward passes"
