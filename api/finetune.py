"""``POST /jobs/finetune``: upload a labelled dataset and queue a transfer-learning job.

Everything that can be known from the archive's listing (unsafe members, bombs, one class, an
empty or too-small class) is refused here with a 4xx before any job exists; unreadable images
can only be found when decoding, so the worker skips and reports those.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from flask import Response, request
from flask_smorest import Blueprint

from api.auth import current_client
from api.idempotency import replay_or_claim
from api.model_access import resolve_base, target_model
from api.schemas import FinetuneFormSchema
from api.services import services
from api.submission import enqueue_or_undo, submission_endpoint
from imgq.errors import InvalidRequest
from imgq.jobs.idempotency import fingerprint
from imgq.jobs.status import JobType
from imgq.jobs.store import new_job_id
from imgq.queueing import FINETUNE_TASK, TRAIN_QUEUE
from imgq.webhooks.callback_urls import check_callback_url
from ml.archive import ArchiveLimits, list_archive
from ml.backbone_specs import BACKBONE_SIZES
from ml.datasets import layout_from_paths

blp = Blueprint("finetune", __name__, url_prefix="/jobs", description="Fine-tune jobs")

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
"""Archive formats accepted as ``dataset``."""

_FINETUNE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": FinetuneFormSchema}},
}


@submission_endpoint(blp, "/finetune", body=_FINETUNE_BODY)
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
    svc.jobs.create_job(
        job_id, JobType.FINETUNE, params, client=current_client().client, callback_url=callback
    )
    return enqueue_or_undo(
        job_id,
        JobType.FINETUNE,
        lambda: svc.celery.send_task(FINETUNE_TASK, args=[job_id], queue=TRAIN_QUEUE),
        undo=lambda: archive.unlink(missing_ok=True),
    )


def _save_upload(job_id: str) -> tuple[Path, str]:
    """Stream the ``dataset`` part to the upload folder; returns its path and SHA-256."""
    part = request.files.get("dataset")
    if part is None or not part.filename:
        raise InvalidRequest("No `dataset` file part: send the dataset archive as `dataset`.")
    name = part.filename.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise InvalidRequest(
            f"`dataset` must be one of {list(ARCHIVE_SUFFIXES)}; got {part.filename!r}."
        )
    upload_dir = services().settings.upload_dir
    upload_dir.mkdir(parents=True, exist_ok=True)
    path = upload_dir / f"{job_id}{suffix}"
    digest = hashlib.sha256()
    with path.open("wb") as target:
        while chunk := part.stream.read(1 << 20):
            digest.update(chunk)
            target.write(chunk)
    return path, digest.hexdigest()


def read_finetune_request(job_id: str) -> tuple[dict[str, Any], str]:
    """Validate the form and the archive; return the job's parameters and the archive's SHA-256.

    The parameters include the saved archive's path as ``archive``.

    Raises:
        ImgqError: any problem, with the saved archive removed again.
    """
    svc = services()
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("Send the dataset as multipart/form-data with a `dataset` file.")
    params = FinetuneFormSchema().load(request.form.to_dict())
    params["model"] = target_model(params["model"], params.pop("owner", None))
    params["base"] = resolve_base(params["base"])  # 404 for a model:version the caller lacks
    params.setdefault("image_size", BACKBONE_SIZES.get(params["base"], 224))
    if "callback_url" in params:
        check_callback_url(params["callback_url"], svc.settings.webhook_allow_private)
    path, digest = _save_upload(job_id)
    try:
        settings = svc.settings
        limits = ArchiveLimits(
            settings.max_dataset_entries,
            settings.max_dataset_unpacked_bytes,
            settings.max_dataset_ratio,
        )
        layout_from_paths(list_archive(path, limits), settings.min_images_per_class, params["seed"])
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return {**params, "archive": str(path)}, digest
