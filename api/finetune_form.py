"""Reading a fine-tune upload: the form's parameters and the dataset archive, checked early.

Everything that can be known from the archive's listing (unsafe members, bombs, one class, an
empty or too-small class) is refused here with a 4xx before any job exists; unreadable images
can only be found when decoding, so the worker skips and reports those.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.services import services
from imgq.callback_urls import check_callback_url
from imgq.errors import ImgqError, InvalidRequest
from ml.archive import ArchiveLimits, list_archive
from ml.backbone_specs import BACKBONE_SIZES
from ml.datasets import layout_from_paths
from ml.registry import BUILTIN_IMAGENET, MODEL_NAME

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
"""Archive formats accepted as ``dataset``."""


class ReservedModelName(ImgqError):
    """The built-in model cannot be fine-tuned into; pick another name."""

    code = "reserved_model_name"
    status = 400


class FinetuneFormSchema(Schema):
    """Fields of ``POST /jobs/finetune`` besides the ``dataset`` file."""

    model = fields.String(required=True, validate=validate.Regexp(MODEL_NAME.pattern))
    base = fields.String(
        load_default="efficientnet_lite0",
        validate=validate.Regexp(r"^[a-z0-9_-]+(:[0-9]+)?$"),
        metadata={"description": "A backbone name, or `model:version` to continue from."},
    )
    image_size = fields.Integer(validate=validate.Range(min=32, max=600))
    epochs = fields.Integer(load_default=10, validate=validate.Range(min=1, max=500))
    fine_tune_epochs = fields.Integer(load_default=5, validate=validate.Range(min=0, max=500))
    unfreeze = fields.Float(load_default=0.2, validate=validate.Range(min=0, max=1))
    learning_rate = fields.Float(load_default=1e-3, validate=validate.Range(min=1e-7, max=1))
    fine_tune_learning_rate = fields.Float(
        load_default=1e-5, validate=validate.Range(min=1e-9, max=1e-1)
    )
    batch_size = fields.Integer(load_default=32, validate=validate.Range(min=1, max=1024))
    augment = fields.Boolean(load_default=False)
    seed = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))
    dropout = fields.Float(load_default=0.2, validate=validate.Range(min=0, max=0.9))
    patience = fields.Integer(load_default=3, validate=validate.Range(min=1, max=100))
    callback_url = fields.String(
        validate=validate.Length(max=2048),
        metadata={"description": "Called (signed POST of the job) when the job ends."},
    )

    @validates_schema
    def _base_is_known(self, data: dict[str, Any], **_: Any) -> None:
        base = data.get("base", "")
        if ":" not in base and base not in BACKBONE_SIZES:
            raise ValidationError(
                f"Unknown backbone; expected one of {sorted(BACKBONE_SIZES)} or `model:version`.",
                "base",
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
    if params["model"] == BUILTIN_IMAGENET:
        raise ReservedModelName(f"`{BUILTIN_IMAGENET}` is the built-in model; choose a name.")
    base = params["base"]
    if ":" in base:
        name, _, number = base.partition(":")
        svc.registry.get(name, int(number))  # 404 for an unknown model:version
    params.setdefault("image_size", BACKBONE_SIZES.get(base, 224))
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
