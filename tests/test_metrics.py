"""``/metrics`` on the API (gunicorn, multiprocess) and on a prediction worker, after real jobs."""

from __future__ import annotations

import base64

import pytest

from imgq.local.supervisor import Service
from imgq.settings import Settings
from tests.support.http import http, wait_for_job
from tests.support.metrics import scrape, scrape_url

pytestmark = pytest.mark.e2e


def test_api_and_worker_expose_the_job_queue_and_inference_series(
    api_server: str, predict_worker: Service, settings: Settings, cat_jpeg: bytes
) -> None:
    body = {"images": [base64.b64encode(cat_jpeg).decode()] * 2}
    for _ in range(3):  # several requests, so several gunicorn threads or processes count
        job_id = http.post(f"{api_server}/jobs/predict", json=body, timeout=10).json()["id"]
        assert wait_for_job(api_server, job_id)["status"] == "succeeded"
    http.post(f"{api_server}/jobs/predict", json={"images": ["@@"]}, timeout=10)

    api = scrape_url(f"{api_server}/metrics")
    assert api['imgq_jobs_submitted_total{type="predict"}'] >= 3
    assert api['imgq_requests_rejected_total{code="invalid_request",status="400"}'] >= 1
    for queue in ("predict", "train", "webhooks"):
        assert f'imgq_queue_depth{{queue="{queue}"}}' in api
    assert "imgq_queue_unacked{}" in api
    assert api["imgq_redundant_results_total{}"] >= 0
    assert api["imgq_resent_images_total{}"] >= 0

    worker = scrape(settings.metrics_port)
    assert worker['imgq_worker_jobs_finished_total{code="",status="succeeded",type="predict"}'] >= 3
    assert worker['imgq_job_latency_seconds_count{type="predict"}'] >= 3
    assert worker['imgq_inference_batch_size_sum{model="imagenet",owner="system"}'] >= 6
    assert worker['imgq_inference_forward_seconds_count{model="imagenet",owner="system"}'] >= 1
    assert worker['imgq_worker_model_version{model="imagenet",owner="system"}'] == 1
