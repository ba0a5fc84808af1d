"""``POST /jobs/finetune``: queue a transfer-learning job on an uploaded or a stored dataset.

An upload is stored by the job as the next version of the dataset ``dataset_name`` (default:
the model's name), replacing its images or, with ``data_mode=append``, added to them; without
an upload the job trains on a stored version (``dataset_version``, or the latest of
``dataset_name``, pinned when the job is accepted). Uploads are checked by ``api.uploads``
before any job exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Response, request
from flask_smorest import Blueprint

from api.auth import current_client
from api.dataset_access import dataset_version
from api.idempotency import replay_or_claim
from api.model_access import resolve_base, target_model
from api.quotas import admit
from api.schemas import FinetuneFormSchema
from api.services import services
from api.submission import enqueue_or_undo, submission_endpoint
from api.uploads import check_upload, has_upload, save_upload
from imgq.errors import InvalidRequest
from imgq.jobs.idempotency import fingerprint
from imgq.jobs.status import JobType
from imgq.jobs.store import new_job_id
from imgq.queueing import FINETUNE_TASK, TRAIN_QUEUE
from imgq.quotas import JobKind
from imgq.webhooks.callback_urls import check_callback_url
from ml.backbone_specs import BACKBONE_SIZES
from ml.dataset_ingest import DataMode
from ml.registry import model_id, split_model_id

blp = Blueprint("finetune", __name__, url_prefix="/jobs", description="Fine-tune jobs")

_FINETUNE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": FinetuneFormSchema}},
}


@submission_endpoint(blp, "/finetune", body=_FINETUNE_BODY)
def submit_finetune() -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    """Queue a fine-tune job: a new version of ``model`` trained on an uploaded dataset (stored
    as the next version of ``dataset_name``) or on a stored dataset version."""
    svc = services()
    request.max_content_length = svc.settings.max_dataset_bytes
    job_id = new_job_id()
    params, content_sha256 = read_finetune_request(job_id)
    archive = Path(params["archive"]) if "archive" in params else None

    def discard_upload() -> None:
        if archive is not None:
            archive.unlink(missing_ok=True)

    settings_part = json.dumps({k: v for k, v in params.items() if k != "archive"}, sort_keys=True)
    try:
        replay = replay_or_claim(fingerprint(settings_part, content_sha256), job_id)
    except Exception:
        discard_upload()
        raise
    if replay is not None:
        discard_upload()
        return replay
    try:
        admit(job_id, JobKind.LONG, size=archive.stat().st_size if archive else 0)
    except Exception:
        discard_upload()
        raise
    callback = params.pop("callback_url", None)
    svc.jobs.create_job(
        job_id, JobType.FINETUNE, params, client=current_client().client, callback_url=callback
    )
    return enqueue_or_undo(
        job_id,
        JobType.FINETUNE,
        lambda: svc.celery.send_task(FINETUNE_TASK, args=[job_id], queue=TRAIN_QUEUE),
        undo=discard_upload,
    )


def _stored_dataset(
    owner: str, name: str | None, reference: str | None
) -> tuple[dict[str, Any], str]:
    """The job parameters naming a stored dataset version, and its fingerprint."""
    if reference is not None:
        dataset, _, number = reference.partition(":")
        version = dataset_version(dataset, int(number), owner)
    elif name is not None:
        version = dataset_version(name, None, owner)  # the latest, pinned now
    else:
        raise InvalidRequest(
            "No `dataset` file part: send the dataset archive as `dataset`, or name a stored "
            "dataset with `dataset_name` (its latest version) or `dataset_version` (name:version)."
        )
    return {"dataset": version.dataset, "dataset_version": version.version}, version.fingerprint


def read_finetune_request(job_id: str) -> tuple[dict[str, Any], str]:
    """Validate the form and the dataset; return the job's parameters and the SHA-256 of what
    it trains on (the upload, or the stored version's fingerprint).

    With an upload, the parameters include the saved archive's path as ``archive``.

    Raises:
        ImgqError: any problem, with the saved archive removed again.
    """
    svc = services()
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("Send the dataset as multipart/form-data with a `dataset` file.")
    params = FinetuneFormSchema().load(request.form.to_dict())
    params["model"] = target_model(params["model"], params.pop("owner", None))
    owner, model_name = split_model_id(params["model"])
    params["base"] = resolve_base(params["base"])  # 404 for a model:version the caller lacks
    if "teacher" in params:
        params["teacher"] = resolve_base(params["teacher"])
    params.setdefault("image_size", BACKBONE_SIZES.get(params["base"], 224))
    if "callback_url" in params:
        check_callback_url(
            params["callback_url"], svc.settings.webhook_allow_private, svc.settings.webhook_ports
        )
    mode: DataMode = params.pop("data_mode")
    name, reference = params.pop("dataset_name", None), params.pop("dataset_version", None)
    if not has_upload():
        stored, content_sha256 = _stored_dataset(str(owner), name, reference)
        return {**params, **stored}, content_sha256
    if reference is not None:
        raise InvalidRequest(
            "`dataset_version` names a stored version to train on; send it without a "
            "`dataset` file (or send the file with `dataset_name`)."
        )
    dataset = model_id(str(owner), name or model_name)
    path, digest = save_upload(job_id)
    try:
        check_upload(path, dataset, mode, params["seed"])
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return {**params, "dataset": dataset, "data_mode": mode.value, "archive": str(path)}, digest
