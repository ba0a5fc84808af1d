"""Stored datasets: list them and their versions, add an upload (an ingest job), edit images.

Every route is owner-scoped through ``api.dataset_access``. Versions never change: an edit
(relabel, delete) makes a new version, and the images a version no longer holds stay on the
store until the sweep finds no version holding them (``ml.dataset_store``). A purge is the
exception, for deletion requests: the bytes go at once, from every version.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

from flask import Response, request, send_file
from flask_smorest import Blueprint
from PIL import Image, UnidentifiedImageError

from api.auth import current_client
from api.dataset_access import DATASET_OWNER_PARAMETER, dataset_id, existing_dataset
from api.dataset_schemas import (
    DatasetEditSchema,
    DatasetListItemSchema,
    DatasetSchema,
    DatasetVersionQuerySchema,
    DatasetVersionSchema,
    ImageDeleteQuerySchema,
    ImagePatchSchema,
    IngestFormSchema,
)
from api.idempotency import replay_or_claim
from api.quotas import admit
from api.schemas import ErrorEnvelopeSchema
from api.services import services
from api.storage import owner_storage_bytes, visible_datasets
from api.submission import enqueue_or_undo, submission_endpoint
from api.uploads import check_upload, save_upload
from imgq.errors import ImageNotFound, InvalidRequest
from imgq.jobs.idempotency import fingerprint
from imgq.jobs.status import JobType
from imgq.jobs.store import new_job_id
from imgq.queueing import INGEST_TASK, TRAIN_QUEUE
from imgq.quotas import JobKind
from imgq.webhooks.callback_urls import check_callback_url
from ml.dataset_store import DatasetVersion
from ml.registry import MODEL_NAME, split_model_id

blp = Blueprint("datasets", __name__, url_prefix="/datasets", description="Stored datasets")

_INGEST_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": IngestFormSchema}},
}
_IMAGE_ROUTE = "/<string:name>/images/<string:image>"


def _names(dataset: str) -> dict[str, str]:
    owner, name = split_model_id(dataset)
    return {"name": name, "owner": str(owner)}


@blp.route("", parameters=[DATASET_OWNER_PARAMETER])
@blp.response(200, DatasetListItemSchema(many=True))
def list_datasets() -> list[dict[str, Any]]:
    """Your datasets (an admin's: every client's, or ``owner``'s), with their latest version's
    size and the store bytes each dataset and each owner take."""
    store = services().datasets
    found = []
    datasets = visible_datasets()
    totals = owner_storage_bytes({_names(d)["owner"] for d in datasets})
    for dataset in datasets:
        latest = store.latest(dataset)
        if latest is None:  # deleted between the listing and now
            continue
        names = _names(dataset)
        found.append(
            {
                **names,
                "version": latest.version,
                "images": len(latest.images),
                "classes": len(latest.classes),
                "storage_bytes": store.storage_bytes(dataset),
                "owner_storage_bytes": totals[names["owner"]],
            }
        )
    return found


@blp.route("/<string:name>", parameters=[DATASET_OWNER_PARAMETER])
@blp.response(200, DatasetSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_dataset(name: str) -> dict[str, Any]:
    """A dataset and all its versions: sizes per class and split, where each came from."""
    store = services().datasets
    dataset = existing_dataset(name)
    versions = [store.get(dataset, number).summary() for number in store.versions(dataset)]
    return {**_names(dataset), "storage_bytes": store.storage_bytes(dataset), "versions": versions}


@blp.route("/<string:name>/versions/<int:version>", parameters=[DATASET_OWNER_PARAMETER])
@blp.arguments(DatasetVersionQuerySchema, location="query")
@blp.response(200, DatasetVersionSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_dataset_version(query: dict[str, Any], name: str, version: int) -> dict[str, Any]:
    """One version, with a page of its images (by hash; filter by ``label`` or ``split``)."""
    store = services().datasets
    dataset = existing_dataset(name)
    found = store.get(dataset, version)
    purged = store.purged(dataset)
    cursor = query.get("cursor", "")
    matching = [
        (image, label, split)
        for image, (label, split) in sorted(found.images.items())
        if image > cursor
        and query.get("label", label) == label
        and query.get("split", split) == split
    ]
    page = matching[: query["limit"]]
    items = [
        {"hash": image, "label": label, "split": split, "purged": image in purged}
        for image, label, split in page
    ]
    next_cursor = page[-1][0] if len(matching) > len(page) else None
    return {**_names(dataset), **found.summary(), "items": items, "next_cursor": next_cursor}


@blp.route(
    "/<string:name>/versions/<int:version>",
    methods=["DELETE"],
    parameters=[DATASET_OWNER_PARAMETER],
)
@blp.response(204)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def delete_dataset_version(name: str, version: int) -> None:
    """Delete a version; its images leave the store with the sweep once no version holds them
    (models trained on it keep working)."""
    store = services().datasets
    dataset = existing_dataset(name)
    store.get(dataset, version)
    store.retire(dataset, version)


@blp.route("/<string:name>", methods=["DELETE"], parameters=[DATASET_OWNER_PARAMETER])
@blp.response(204)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def delete_dataset(name: str) -> None:
    """Delete a dataset with every version and image (its owner or an admin)."""
    services().datasets.delete(existing_dataset(name))


@submission_endpoint(blp, "/<string:name>/versions", body=_INGEST_BODY)
def submit_ingest(name: str) -> tuple[dict[str, Any], int, dict[str, str]] | Response:
    """Queue an ingest job: the uploaded archive becomes the dataset's next version (replacing
    its images, or with ``data_mode=append`` added to them), without training."""
    svc = services()
    request.max_content_length = svc.settings.max_dataset_bytes
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest("Send the dataset as multipart/form-data with a `dataset` file.")
    if not MODEL_NAME.match(name):
        raise InvalidRequest(
            f"Dataset names match {MODEL_NAME.pattern}; got {name!r}.", {"dataset": name}
        )
    form = IngestFormSchema().load(request.form.to_dict())
    dataset = dataset_id(name, form.pop("owner", None))
    callback = form.pop("callback_url", None)
    if callback is not None:
        check_callback_url(callback, svc.settings.webhook_allow_private, svc.settings.webhook_ports)
    job_id = new_job_id()
    path, digest = save_upload(job_id)
    params = {"dataset": dataset, "data_mode": form["data_mode"].value, "seed": form["seed"]}
    try:
        check_upload(path, dataset, form["data_mode"], form["seed"])
        replay = replay_or_claim(fingerprint(json.dumps(params, sort_keys=True), digest), job_id)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    if replay is not None:
        path.unlink(missing_ok=True)
        return replay
    try:
        admit(job_id, JobKind.LONG, size=path.stat().st_size)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    svc.jobs.create_job(
        job_id,
        JobType.INGEST,
        {**params, "archive": str(path)},
        client=current_client().client,
        callback_url=callback,
    )
    return enqueue_or_undo(
        job_id,
        JobType.INGEST,
        lambda: svc.celery.send_task(INGEST_TASK, args=[job_id], queue=TRAIN_QUEUE),
        undo=lambda: path.unlink(missing_ok=True),
    )


def _mimetype(image_bytes: bytes) -> str:
    try:
        found = Image.open(io.BytesIO(image_bytes)).format
    except (UnidentifiedImageError, OSError):
        found = None
    return Image.MIME.get(found or "", "application/octet-stream")


@blp.route(_IMAGE_ROUTE, parameters=[DATASET_OWNER_PARAMETER])
@blp.response(200, description="The image's bytes, as uploaded.")
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
@blp.alt_response(410, schema=ErrorEnvelopeSchema)
def get_image(name: str, image: str) -> Response:
    """An image of the dataset, as uploaded (cacheable: its address is its hash)."""
    store = services().datasets
    dataset = existing_dataset(name)
    try:
        image_bytes = store.read_image(dataset, image)
    except ImageNotFound:
        raise _no_image(name, image) from None
    return send_file(io.BytesIO(image_bytes), mimetype=_mimetype(image_bytes), max_age=86400)


def _no_image(name: str, image: str) -> ImageNotFound:
    return ImageNotFound(
        f"Dataset {name!r} has no image {image!r}.", {"dataset": name, "image": image}
    )


def _edit(
    name: str,
    image: str,
    change: Callable[[dict[str, tuple[str, str]]], dict[str, tuple[str, str]]],
    details: dict[str, Any],
) -> DatasetVersion:
    """Make the next version from the latest by ``change``; 404 if the latest lacks ``image``."""
    store = services().datasets
    dataset = existing_dataset(name)

    def make(latest: DatasetVersion | None, number: int) -> DatasetVersion:
        if latest is None or image not in latest.images:
            raise _no_image(name, image)
        return DatasetVersion(
            dataset,
            number,
            time.time(),
            latest.version,
            "edit",
            latest.seed,
            change(dict(latest.images)),
            current_client().client,
            {**details, "image": image},
        )

    return store.commit(dataset, make)


@blp.route(_IMAGE_ROUTE, methods=["PATCH"], parameters=[DATASET_OWNER_PARAMETER])
@blp.arguments(ImagePatchSchema)
@blp.response(200, DatasetEditSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def relabel_image(body: dict[str, Any], name: str, image: str) -> dict[str, Any]:
    """Give a mislabelled image its right class: a new version (the image keeps its split)."""
    label = body["label"]
    latest = services().datasets.get(existing_dataset(name))
    if latest.images.get(image, ("", ""))[0] == label:  # nothing to change: no new version
        return {**_names(latest.dataset), **latest.summary(), "purged": False}

    def relabel(images: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        return {**images, image: (label, images[image][1])}

    version = _edit(name, image, relabel, {"edit": "relabel", "label": label})
    return {**_names(version.dataset), **version.summary(), "purged": False}


@blp.route(_IMAGE_ROUTE, methods=["DELETE"], parameters=[DATASET_OWNER_PARAMETER])
@blp.arguments(ImageDeleteQuerySchema, location="query")
@blp.response(200, DatasetEditSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def delete_image(query: dict[str, Any], name: str, image: str) -> dict[str, Any]:
    """Remove an image: a new version without it. With ``purge=true`` its bytes also go at
    once, for good: every version reads it as purged and training on them skips it."""
    store = services().datasets
    dataset = existing_dataset(name)
    latest = store.get(dataset)
    if image in latest.images:

        def drop(images: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
            return {kept: entry for kept, entry in images.items() if kept != image}

        latest = _edit(name, image, drop, {"edit": "delete", "purge": query["purge"]})
    elif not query["purge"] or image not in store.known_splits(dataset):
        raise _no_image(name, image)
    if query["purge"]:
        store.purge(dataset, image)
    return {**_names(dataset), **latest.summary(), "purged": query["purge"]}
