"""A webhook receiver that is down for the whole retry window: deliveries fail, results stay.

The session's settings retry three times (``0,0.3,0.3`` s); production's schedule spans about
five hours, but the outcome is the same: every attempt is recorded, the delivery ends
``failed``, nothing is left scheduled, and the job's own result is untouched.
"""

from __future__ import annotations

import base64
import time

import pytest
import redis

from imgq.local.supervisor import free_port
from imgq.redis_keys import WEBHOOKS_SCHEDULED
from imgq.settings import Settings
from tests.support.http import http, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("predict_worker", "webhooks_worker")]


def test_receiver_down_for_the_whole_window(
    api_server: str, settings: Settings, redis_client: redis.Redis, cat_jpeg: bytes
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    body = {"images": [base64.b64encode(cat_jpeg).decode()], "callback_url": nobody}
    job_ids = []
    for _ in range(10):
        response = http.post(f"{api_server}/jobs/predict", json=body)
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["id"])
    results = {job_id: wait_for_job(api_server, job_id)["result"] for job_id in job_ids}

    deadline = time.monotonic() + 60
    for job_id in job_ids:
        while True:
            document = http.get(f"{api_server}/jobs/{job_id}").json()
            webhook = document["webhook"] or {}  # none until the first attempt is scheduled
            if webhook.get("state") == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert document["webhook"]["state"] == "failed", document["webhook"]
        attempts = document["webhook"]["attempts"]
        assert len(attempts) == len(settings.webhook_schedule)
        assert all("error" in attempt for attempt in attempts)  # refused connections
        assert document["status"] == "succeeded"
        assert document["result"] == results[job_id]
        assert redis_client.zscore(WEBHOOKS_SCHEDULED, job_id) is None
