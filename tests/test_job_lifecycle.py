"""Canceling queued jobs through the real API and worker."""

from __future__ import annotations

import base64

import pytest

from imgq.local.supervisor import Service
from imgq.queueing import PREDICT_QUEUE, make_celery
from imgq.settings import Settings
from tests.support.http import http, wait_for_job

pytestmark = pytest.mark.e2e


def test_queued_predict_job_is_canceled_and_never_runs(
    api_server: str, predict_worker: Service, settings: Settings, cat_jpeg: bytes
) -> None:
    control = make_celery(settings).control
    assert control.cancel_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)
    try:
        body = {"images": [base64.b64encode(cat_jpeg).decode()]}
        job_id = http.post(f"{api_server}/jobs/predict", json=body, timeout=10).json()["id"]
        canceled = http.delete(f"{api_server}/jobs/{job_id}", timeout=5)
        assert canceled.status_code == 200
        assert canceled.json()["status"] == "canceled"
    finally:
        assert control.add_consumer(PREDICT_QUEUE, destination=[predict_worker.node], reply=True)
    follow_up = http.post(f"{api_server}/jobs/predict", json=body, timeout=10).json()["id"]
    assert wait_for_job(api_server, follow_up)["status"] == "succeeded"
    document = http.get(f"{api_server}/jobs/{job_id}", timeout=5).json()
    assert document["status"] == "canceled" and document["result"] is None
    assert http.delete(f"{api_server}/jobs/{follow_up}", timeout=5).status_code == 409
    assert http.delete(f"{api_server}/jobs/nope", timeout=5).status_code == 404
