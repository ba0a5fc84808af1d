"""``POST /jobs/<id>/feedback``: the true labels of a predict job's images.

Feedback feeds each version's online accuracy (``imgq.monitoring``) and, with
``add_to_dataset``, the model's dataset for the next retraining: the labelled images become a
new dataset version (``source: "feedback"``). That needs the image bytes after the job, so a
predict job keeps them only when asked (``retain=true``, or the model's ``retain_images``), on
the model store as images of the model's dataset waiting for a version.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask_smorest import Blueprint

from api.auth import current_client
from api.jobs import owned_fields
from api.monitoring_schemas import FeedbackResultSchema, FeedbackSchema
from api.schemas import ErrorEnvelopeSchema
from api.services import services
from imgq.api_keys import Role
from imgq.errors import (
    Forbidden,
    ImagesNotRetained,
    InvalidRequest,
    JobNotSucceeded,
    ValidationFailed,
)
from imgq.jobs.status import JobStatus, JobType
from imgq.monitoring import MonitorLog
from ml.dataset_ingest import SPLIT_FRACTIONS
from ml.dataset_splits import assign_splits
from ml.dataset_store import DatasetVersion
from ml.datasets import split_shares
from ml.labels import class_names
from ml.registry import split_model_id

blp = Blueprint("feedback", __name__, url_prefix="/jobs", description="Feedback on predictions")


def _check_labels(labels: list[str | None], count: int, classes: tuple[str, ...]) -> None:
    if len(labels) != count:
        raise ValidationFailed(
            f"The job has {count} images; got {len(labels)} labels.",
            {"labels": [f"Expected {count} labels, one per image (null: unknown)."]},
        )
    known = set(classes)
    wrong = {i: label for i, label in enumerate(labels) if label is not None and label not in known}
    if wrong:
        index, label = next(iter(wrong.items()))
        raise ValidationFailed(
            f"Label {label!r} of image {index} is not a class of the version that served it.",
            {
                "labels": {
                    str(i): [f"Not a class of the version: {name!r}."] for i, name in wrong.items()
                }
            },
        )


@blp.route("/<string:job_id>/feedback", methods=["POST"])
@blp.arguments(FeedbackSchema)
@blp.response(200, FeedbackResultSchema)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.alt_response(409, schema=ErrorEnvelopeSchema)
@blp.alt_response(422, schema=ErrorEnvelopeSchema)
def send_feedback(body: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Give the true label of each image of a succeeded predict job (``null``: unknown).

    Sending again replaces the labels sent before; each image counts once.
    """
    svc = services()
    fields = owned_fields(job_id)
    if fields.get("type") != JobType.PREDICT.value:
        raise InvalidRequest("Feedback is for predict jobs.", {"id": job_id})
    if fields.get("status") != JobStatus.SUCCEEDED.value:
        raise JobNotSucceeded(
            f"Job {job_id!r} is {fields.get('status')}; feedback needs a succeeded job.",
            {"id": job_id, "status": fields.get("status")},
        )
    result = json.loads(fields["result"])
    model, version = fields["model"], int(result["version"])
    classes = class_names(svc.registry.get(model, version).labels)
    predicted = [top[0]["label"] for top in result["predictions"]]
    _check_labels(body["labels"], len(predicted), classes)
    if body["add_to_dataset"]:
        _check_may_add(model, fields)
    log = MonitorLog(svc.redis, svc.settings.job_ttl_s)
    stored = log.save_feedback(model, version, job_id, body["labels"], predicted)
    answer: dict[str, Any] = {"id": job_id, "model": result["model"], "version": version}
    answer["labels"] = stored
    answer["correct"] = [
        None if t is None else t == p for t, p in zip(stored, predicted, strict=True)
    ]
    if body["add_to_dataset"]:
        answer["dataset"] = _add_to_dataset(model, fields, stored)
    return answer


def _check_may_add(model: str, fields: dict[str, str]) -> None:
    owner, _ = split_model_id(model)
    caller = current_client()
    if owner != caller.client and caller.role is not Role.ADMIN:
        raise Forbidden("Only the model's owner may add its predictions' images to its dataset.")
    if not fields.get("retained"):
        raise ImagesNotRetained(
            "The job's images were not kept: send predictions with `retain=true`, or set the "
            "model's `retain_images`, to add them to its dataset later.",
            {"id": fields["id"]},
        )


def _add_to_dataset(model: str, fields: dict[str, str], labels: list[str | None]) -> dict[str, Any]:
    """Commit a dataset version with the job's labelled images (``source: "feedback"``)."""
    store = services().datasets
    dataset = model  # a model's dataset has the model's id
    hashes: list[str] = json.loads(fields["retained"])
    labelled = {image: label for image, label in zip(hashes, labels, strict=True) if label}
    missing = [image for image in labelled if not store.has_image(dataset, image)]
    if missing:
        raise ImagesNotRetained(
            "Some of the job's images are no longer kept (their hold ran out).",
            {"id": fields["id"], "images": missing[:10]},
        )

    latest = store.latest(dataset)
    if latest is not None and all(
        latest.images.get(image, ("", ""))[0] == label for image, label in labelled.items()
    ):  # sent before: the dataset holds these labels already, no new version
        return {"name": split_model_id(dataset)[1], "version": latest.version, "added": 0}

    def make(latest: DatasetVersion | None, number: int) -> DatasetVersion:
        images = dict(latest.images) if latest is not None else {}
        seed = latest.seed if latest is not None else 0
        wanted = {i: label for i, (label, _) in images.items()} | labelled
        splits = assign_splits(
            wanted,
            known=store.known_splits(dataset),
            given={},
            shares=split_shares({"train"}, SPLIT_FRACTIONS),
            seed=seed,
        )
        return DatasetVersion(
            dataset,
            number,
            time.time(),
            latest.version if latest is not None else None,
            "feedback",
            seed,
            {image: (label, splits[image]) for image, label in wanted.items()},
            current_client().client,
            {"job_id": fields["id"]},
        )

    version = store.commit(dataset, make)
    return {"name": split_model_id(dataset)[1], "version": version.version, "added": len(labelled)}
