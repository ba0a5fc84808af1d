"""A training worker killed mid-epoch: its job fails with ``worker_lost``, nothing is published."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from imgq.local.supervisor import Service, process_tree, start_train_worker, start_webhooks_worker
from imgq.queueing import TRAIN_QUEUE, make_celery
from imgq.settings import Settings
from tests.support.datasets import make_dataset_zip, submit_finetune
from tests.support.http import http, wait_for_job
from tests.support.services import start_with_own_metrics

pytestmark = pytest.mark.e2e


def test_killed_training_worker_is_reaped_and_the_active_version_is_untouched(
    api_server: str, settings: Settings, service_dir: Path, train_worker: Service
) -> None:
    control = make_celery(settings).control
    # The session's own training worker steps aside, so the doomed one gets the job.
    assert control.cancel_consumer(TRAIN_QUEUE, destination=[train_worker.node], reply=True)
    quick = settings.model_copy(update={"train_heartbeat_timeout_s": 3})
    trainer = start_with_own_metrics(start_train_worker, quick, service_dir, "doomed")
    housekeeper = start_with_own_metrics(start_webhooks_worker, quick, service_dir, "reaper")
    try:
        response = submit_finetune(
            api_server,
            make_dataset_zip(per_class=20),
            model="doomed",
            epochs=200,
            augment="true",
            batch_size=4,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            document = http.get(f"{api_server}/jobs/{job_id}").json()
            if document["progress"]:
                break
            time.sleep(0.2)
        assert document["status"] == "running", document
        for pid in process_tree(trainer.process.pid):
            os.kill(pid, signal.SIGKILL)  # mid-epoch, no chance to clean up
        trainer.process.wait()

        final = wait_for_job(api_server, job_id, timeout_s=60)
        assert final["status"] == "failed"
        assert final["error"]["code"] == "worker_lost"
        assert http.get(f"{api_server}/models/doomed").status_code == 404  # nothing published
        assert http.get(f"{api_server}/models/imagenet").json()["active_version"] == 1
    finally:
        trainer.stop()
        housekeeper.stop()
        assert control.add_consumer(TRAIN_QUEUE, destination=[train_worker.node], reply=True)
