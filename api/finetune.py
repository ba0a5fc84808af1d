"""``POST /jobs/finetune``: upload a labelled dataset and queue a transfer-learning job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Response, request

from api.auth import current_client
from api.finetune_form import FinetuneFormSchema, read_finetune_request
from api.idempotency import replay_or_claim
from api.jobs import blp
from api.services import services
from api.submission import enqueue_or_undo, submission_endpoint
from imgq.idempotency import fingerprint
from imgq.jobs import new_job_id
from imgq.queueing import FINETUNE_TASK, TRAIN_QUEUE

_FINETUNE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": FinetuneFormSchema}},
}


@submission_endpoint(blp, "/finetune", _FINETUNE_BODY)
def submit_finetune() -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    """Queue a fine-tune job: a new version of ``model`` trained on the uploaded dataset."""
    svc = services()
    request.max_content_length = svc.settings.max_dataset_bytes
    job_id = new_job_id()
    params, archive_sha256 = read_finetune_request(job_id)
    archive = Path(params["archive"])
    settings_part = json.dumps({k: v for k, v in params.items() if k != "archive"}, sort_keys=True)
    try:
        replay = replay_or_claim(fingerprint(settings_part, archive_sha256), job_id)
    except Exception:
        archive.unlink(missing_ok=True)
        raise
    if replay is not None:
        archive.unlink(missing_ok=True)
        return replay
    callback = params.pop("callback_url", None)
    svc.jobs.create_finetune_job(
        job_id, params, client=current_client().client, callback_url=callback
    )
    return enqueue_or_undo(
        job_id,
        "finetune",
        lambda: svc.celery.send_task(FINETUNE_TASK, args=[job_id], queue=TRAIN_QUEUE),
        undo=lambda: archive.unlink(missing_ok=True),
    )
