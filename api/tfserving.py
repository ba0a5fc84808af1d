"""TF Serving's REST API over imgq's models: answers as TF Serving gives for imgq's own export.

A client written for ``tensorflow_model_server`` serving imgq's SavedModel export
(``ml.export``: signature ``serving_default``, input ``images``, encoded image bytes; outputs
``classes``, the top class names, and ``scores``, best first, at most
``SAVED_MODEL_TOP_K``) can point at imgq instead and get the same JSON: images go in as
``{"instances": [{"b64": ...}, ...]}`` (row form; ``{"images": {"b64": ...}}`` per instance
too) or ``{"inputs": [...]}`` / ``{"inputs": {"images": [...]}}`` (columnar form), and come back
as ``{"predictions": [{"classes": [...], "scores": [...]}, ...]}`` or
``{"outputs": {"classes": [[...]], "scores": [[...]]}}``. ``GET /v1/models/<name>`` is the
model status API. Without ``/versions/<v>`` the model's active version serves (TF Serving's
would be the latest; imgq's served version is the active one, a canary's share included).

``:classify`` and ``:regress`` are not offered: they need a classification or regression
signature over ``tf.Example``, which imgq's export does not have, so TF Serving itself
refuses them for it. A predict call is a synchronous view of an ordinary predict job
(``api.sync_predict``); errors are ``{"error": "<message>"}`` (``api.protocol_errors``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from flask import Response, jsonify, request, url_for
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from api.protocol_errors import protocol_errors
from api.services import services
from api.sync_predict import predict_now, requested_version
from imgq.errors import InvalidRequest
from ml.export_formats import SAVED_MODEL_INPUT, SAVED_MODEL_OUTPUTS, SAVED_MODEL_TOP_K
from ml.labels import class_names

blp = Blueprint("tfserving", __name__, url_prefix="/v1/models", description="TF Serving REST API")

SIGNATURE = "serving_default"
"""The one signature of imgq's SavedModel export."""


class PredictRequestSchema(Schema):
    """``:predict`` body: ``instances`` (row form) or ``inputs`` (columnar form)."""

    signature_name = fields.String(metadata={"description": f"Only `{SIGNATURE}`."})
    instances = fields.List(
        fields.Raw(), metadata={"description": '`{"b64": "<base64 image>"}` per image.'}
    )
    inputs = fields.Raw(
        metadata={"description": '`[{"b64": ...}, ...]` or `{"images": [{"b64": ...}, ...]}`.'}
    )


class PredictionSchema(Schema):
    """One image's answer in the row form."""

    classes = fields.List(fields.String(), required=True)
    scores = fields.List(fields.Float(), required=True)


class ColumnarOutputsSchema(Schema):
    """Every image's answer in the columnar form: one list per image under each output."""

    classes = fields.List(fields.List(fields.String()), required=True)
    scores = fields.List(fields.List(fields.Float()), required=True)


class PredictResponseSchema(Schema):
    """``:predict`` answer: ``predictions`` for ``instances``, ``outputs`` for ``inputs``."""

    predictions = fields.List(fields.Nested(PredictionSchema))
    outputs = fields.Nested(ColumnarOutputsSchema)


class VersionStatusBodySchema(Schema):
    """A version's status code and message."""

    error_code = fields.String(required=True)
    error_message = fields.String(required=True)


class VersionStatusSchema(Schema):
    """One version's state."""

    version = fields.String(required=True)
    state = fields.String(required=True)
    status = fields.Nested(VersionStatusBodySchema, required=True)


class ModelStatusSchema(Schema):
    """``GET /v1/models/<name>[/versions/<v>]``."""

    model_version_status = fields.List(fields.Nested(VersionStatusSchema), required=True)


def _image(value: Any, index: int) -> bytes:
    """An image from a ``DT_STRING`` value: ``{"b64": ...}``, or a plain string's UTF-8."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(
                f"Instance {index}: `b64` is not valid base64.", {"image": index}
            ) from exc
    if isinstance(value, str):
        return value.encode()
    raise InvalidRequest(
        f'Instance {index}: expected {{"b64": "<base64 image>"}} for input '
        f"'{SAVED_MODEL_INPUT}', got {json.dumps(value)[:80]}."
    )


def _instance_value(instance: Any, index: int) -> Any:
    """A row's value of the one input: the value itself, or under the input's name."""
    if isinstance(instance, dict) and "b64" not in instance:
        if set(instance) != {SAVED_MODEL_INPUT}:
            raise InvalidRequest(
                f"Instance {index} names inputs {sorted(instance)}; the signature's only "
                f"input is '{SAVED_MODEL_INPUT}'."
            )
        return instance[SAVED_MODEL_INPUT]
    return instance


def _column(inputs: Any) -> list[Any]:
    """The columnar form's values of the one input, by itself or under its name."""
    if isinstance(inputs, dict) and "b64" not in inputs:
        if set(inputs) != {SAVED_MODEL_INPUT}:
            raise InvalidRequest(
                f"`inputs` names {sorted(inputs)}; the signature's only input is "
                f"'{SAVED_MODEL_INPUT}'."
            )
        inputs = inputs[SAVED_MODEL_INPUT]
    if not isinstance(inputs, list):
        raise InvalidRequest(f"Input '{SAVED_MODEL_INPUT}' takes a list of images, shape [-1].")
    return inputs


def read_predict_request(body: bytes) -> tuple[list[bytes], bool]:
    """The images of a ``:predict`` body, and whether it used the columnar form.

    Raises:
        InvalidRequest: the body is not JSON, names another signature, has neither or both
            of ``instances`` and ``inputs``, or holds something other than images (400).
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"JSON Parse error: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("The request must be a JSON object.")
    signature = document.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise InvalidRequest(f"Serving signature name: {json.dumps(signature)} not found.")
    if ("instances" in document) == ("inputs" in document):
        raise InvalidRequest("Send exactly one of 'instances' (rows) and 'inputs' (columns).")
    columnar = "inputs" in document
    if columnar:
        values = _column(document["inputs"])
    elif isinstance(document["instances"], list):
        values = [_instance_value(row, i) for i, row in enumerate(document["instances"])]
    else:
        raise InvalidRequest("'instances' must be a list, one image per instance.")
    if not values:
        raise InvalidRequest("No images: send at least one instance.")
    return [_image(value, i) for i, value in enumerate(values)], columnar


def predict_answer(predictions: list[list[dict[str, Any]]], columnar: bool) -> dict[str, Any]:
    """The signature's outputs for each image's top-k list, in the form the request used."""
    classes_key, scores_key = SAVED_MODEL_OUTPUTS
    classes = [[p["label"] for p in row] for row in predictions]
    scores = [[p["score"] for p in row] for row in predictions]
    if columnar:
        return {"outputs": {classes_key: classes, scores_key: scores}}
    return {
        "predictions": [
            {classes_key: row_classes, scores_key: row_scores}
            for row_classes, row_scores in zip(classes, scores, strict=True)
        ]
    }


@blp.route("/<string:name>:predict", methods=["POST"], endpoint="predict")
@blp.route(
    "/<string:name>/versions/<string:version>:predict",
    methods=["POST"],
    endpoint="version_predict",
)
@blp.doc(
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": PredictRequestSchema}},
    }
)
@blp.response(200, PredictResponseSchema)
@protocol_errors(blp, 409, 422)
def predict(name: str, version: str | None = None) -> Response:
    """Classify images as the SavedModel export's ``serving_default`` signature does."""
    body = request.get_data()  # read before anything looks at a form: curl -d sends one
    _, asked = requested_version(name, version)
    images, columnar = read_predict_request(body)
    top_k = min(SAVED_MODEL_TOP_K, len(class_names(asked.labels)))
    options = {"model": name, "version": asked.version if version else None, "top_k": top_k}
    job_id, result = predict_now(images, options)
    response = jsonify(predict_answer(result["predictions"], columnar))
    response.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return response


@blp.route("/<string:name>", endpoint="model_status")
@blp.route("/<string:name>/versions/<string:version>", endpoint="version_status")
@blp.response(200, ModelStatusSchema)
@protocol_errors(blp)
def model_status(name: str, version: str | None = None) -> dict[str, Any]:
    """The model's versions, each ``AVAILABLE``: any of them may be asked for."""
    model, asked = requested_version(name, version)
    numbers = [asked.version] if version else services().registry.versions(model)
    return {
        "model_version_status": [
            {
                "version": str(n),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for n in numbers
        ]
    }
