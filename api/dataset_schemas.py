"""Schemas of the dataset endpoints (``api.datasets``): their validation and OpenAPI shapes.

Kept apart from ``api.schemas`` (jobs, models, errors) because datasets are one idea with many
shapes of their own; the error envelope and the job shapes are shared from there.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from ml.dataset_ingest import DataMode
from ml.dataset_store import IMAGE_HASH, SOURCES

CLASS_NAME_LENGTH = 200
"""Longest class name an image may be relabelled to (a folder name in an upload)."""


class SplitCountsSchema(Schema):
    """Images of one class in each split."""

    train = fields.Integer(required=True)
    validation = fields.Integer(required=True)
    test = fields.Integer(required=True)


class DatasetVersionSummarySchema(Schema):
    """One version of a dataset, as ``GET /datasets/<name>`` lists it."""

    version = fields.Integer(required=True)
    created_at = fields.Float(required=True, metadata={"description": "Unix time."})
    parent = fields.Integer(allow_none=True, metadata={"description": "The version before."})
    source = fields.String(required=True, validate=validate.OneOf(SOURCES))
    images = fields.Integer(required=True)
    classes = fields.Dict(
        keys=fields.String(), values=fields.Nested(SplitCountsSchema), required=True
    )
    fingerprint = fields.String(
        required=True, metadata={"description": "SHA-256 over its (image, label, split) list."}
    )
    by = fields.String(metadata={"description": "The client that made it."})


class DatasetListItemSchema(Schema):
    """One dataset in ``GET /datasets``."""

    name = fields.String(required=True)
    owner = fields.String(required=True)
    version = fields.Integer(required=True, metadata={"description": "The latest version."})
    images = fields.Integer(required=True, metadata={"description": "In the latest version."})
    classes = fields.Integer(required=True, metadata={"description": "In the latest version."})
    storage_bytes = fields.Integer(
        required=True, metadata={"description": "Bytes of every version's images on the store."}
    )
    owner_storage_bytes = fields.Integer(
        required=True,
        metadata={"description": "Bytes the owner's models and datasets take on the store."},
    )


class DatasetSchema(Schema):
    """``GET /datasets/<name>``."""

    name = fields.String(required=True)
    owner = fields.String(required=True)
    storage_bytes = fields.Integer(required=True)
    versions = fields.List(fields.Nested(DatasetVersionSummarySchema), required=True)


class DatasetImageSchema(Schema):
    """One image of a dataset version."""

    hash = fields.String(required=True, metadata={"description": "SHA-256 of its bytes."})
    label = fields.String(required=True)
    split = fields.String(required=True, validate=validate.OneOf(("train", "validation", "test")))
    purged = fields.Boolean(
        required=True, metadata={"description": "Its bytes were removed for good."}
    )


class DatasetVersionSchema(DatasetVersionSummarySchema):
    """``GET /datasets/<name>/versions/<v>``: the version and a page of its images."""

    name = fields.String(required=True)
    owner = fields.String(required=True)
    items = fields.List(
        fields.Nested(DatasetImageSchema),
        required=True,
        metadata={"description": "A page of the version's images, by hash."},
    )
    next_cursor = fields.String(
        allow_none=True, metadata={"description": "Pass as `cursor` for the next page."}
    )


class DatasetVersionQuerySchema(Schema):
    """Query of ``GET /datasets/<name>/versions/<v>``."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(validate=validate.Regexp(IMAGE_HASH.pattern))
    label = fields.String(metadata={"description": "Only images of this class."})
    split = fields.String(validate=validate.OneOf(("train", "validation", "test")))


class IngestFormSchema(Schema):
    """Fields of ``POST /datasets/<name>/versions`` besides the ``dataset`` file."""

    owner = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "Admins: the client whose dataset this is."},
    )
    data_mode = fields.Enum(DataMode, by_value=True, load_default=DataMode.REPLACE)
    seed = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=2**31 - 1),
        metadata={"description": "Split seed of a new dataset (an existing one keeps its own)."},
    )
    callback_url = fields.String(
        validate=validate.Length(max=2048),
        metadata={"description": "Called (signed POST of the job) when the job ends."},
    )


class ImagePatchSchema(Schema):
    """``PATCH /datasets/<name>/images/<sha256>``: relabel an image (a new version)."""

    label = fields.String(required=True, validate=validate.Length(min=1, max=CLASS_NAME_LENGTH))


class ImageDeleteQuerySchema(Schema):
    """Query of ``DELETE /datasets/<name>/images/<sha256>``."""

    purge = fields.Boolean(
        load_default=False,
        metadata={"description": "Remove the bytes for good, from every version, at once."},
    )


class DatasetEditSchema(DatasetVersionSummarySchema):
    """The answer to an edit: the dataset's latest version after it."""

    name = fields.String(required=True)
    owner = fields.String(required=True)
    purged = fields.Boolean(metadata={"description": "Whether the image's bytes were purged."})
