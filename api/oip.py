"""Open Inference Protocol v2 over HTTP (KServe, Triton): imgq as a drop-in for their clients.

``tritonclient.http``, KServe's and MLServer's clients speak this protocol: health, server
and model metadata, and ``infer``. Every imgq model the caller can see is a model here, with
one input ``image`` (BYTES: encoded images, any format imgq accepts) and one output
``probabilities`` (FP32, ``[-1, <classes>]``); the ``binary_tensor_data`` and
``classification`` extensions of Triton are supported (``api.oip_codec``). An infer call is a
synchronous view of an ordinary predict job (``api.sync_predict``): same queue, batching,
keys, ownership and quotas, and the job shows in ``GET /jobs``.

Health and server metadata are open, like Triton's and like ``/healthz``: probes carry no
key, and they tell nothing about anyone's models. Model metadata, readiness and infer need
the bearer key (``tritonclient`` passes it with ``headers=``), and another client's model is a
404 exactly like a model that does not exist. Errors are ``{"error": "<message>"}``
(``api.protocol_errors``).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from flask import Response, request, url_for
from flask_smorest import Blueprint

from api.auth import OPEN_OPERATION
from api.model_access import version_of
from api.oip_binary import HEADER_LENGTH, inflate
from api.oip_codec import (
    INPUT_NAME,
    OUTPUT_NAME,
    OutputTensor,
    RequestedOutput,
    infer_response,
    read_infer_request,
)
from api.oip_schemas import (
    InferRequestSchema,
    InferResponseSchema,
    ModelMetadataSchema,
    ModelReadySchema,
    ServerLiveSchema,
    ServerMetadataSchema,
    ServerReadySchema,
)
from api.protocol_errors import protocol_errors
from api.services import services
from api.sync_predict import predict_now, requested_version
from imgq.errors import InvalidRequest, ServiceUnavailable
from ml.labels import class_names

blp = Blueprint(
    "oip", __name__, url_prefix="/v2", description="Open Inference Protocol v2 (KServe, Triton)"
)

SERVER_NAME = "imgq"
"""``name`` in the server metadata."""
PLATFORM = "imgq"
"""``platform`` of every model: imgq's own serving, whatever the backbone."""
EXTENSIONS = ("binary_tensor_data", "classification")
"""Triton's protocol extensions imgq implements."""

_BINARY_BODY = {
    "type": "string",
    "format": "binary",
    "description": f"A JSON header of `{HEADER_LENGTH}` bytes, then binary tensor data.",
}
_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": InferRequestSchema},
        "application/octet-stream": {"schema": _BINARY_BODY},
    },
}
_INFER_ANSWER = {
    "description": "JSON, or a JSON header and binary tensor data.",
    "content": {
        "application/json": {"schema": InferResponseSchema},
        "application/octet-stream": {"schema": _BINARY_BODY},
    },
}
_HEADER_LENGTH_PARAMETER = {
    "in": "header",
    "name": HEADER_LENGTH,
    "required": False,
    "schema": {"type": "integer"},
    "description": "Binary tensor data: the JSON header's length (0: the body is one image).",
}


def _server_version() -> str:
    try:
        return metadata.version("imgq")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0"


@blp.route("", strict_slashes=False)
@blp.doc(**OPEN_OPERATION)
@blp.response(200, ServerMetadataSchema)
@protocol_errors(blp)
def server_metadata() -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions imgq supports."""
    return {"name": SERVER_NAME, "version": _server_version(), "extensions": list(EXTENSIONS)}


@blp.route("/health/live")
@blp.doc(**OPEN_OPERATION)
@blp.response(200, ServerLiveSchema)
@protocol_errors(blp)
def server_live() -> dict[str, Any]:
    """The process serves (like ``/healthz``)."""
    return {"live": True}


@blp.route("/health/ready")
@blp.doc(**OPEN_OPERATION)
@blp.response(200, ServerReadySchema)
@protocol_errors(blp)
def server_ready() -> dict[str, Any]:
    """Redis answers, so inference requests can be taken (like ``/readyz``)."""
    if not services().redis.ping():
        raise ServiceUnavailable("Redis did not answer.")
    return {"ready": True}


@blp.route("/models/<string:name>", endpoint="model_metadata")
@blp.route("/models/<string:name>/versions/<string:version>", endpoint="version_metadata")
@blp.response(200, ModelMetadataSchema)
@protocol_errors(blp)
def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
    """A model's versions (yours to request), its input and its output."""
    model, served = requested_version(name, version)
    classes = len(class_names(served.labels))
    return {
        "name": name,
        "versions": [str(number) for number in services().registry.versions(model)],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, classes]}],
    }


@blp.route("/models/<string:name>/ready", endpoint="model_ready")
@blp.route("/models/<string:name>/versions/<string:version>/ready", endpoint="version_ready")
@blp.response(200, ModelReadySchema)
@protocol_errors(blp)
def model_ready(name: str, version: str | None = None) -> dict[str, Any]:
    """The model (version) can be asked for inference: it exists and is yours or shared."""
    requested_version(name, version)
    return {"name": name, "ready": True}


def _top_k(outputs: tuple[RequestedOutput, ...], classes: int) -> int:
    """The ``top_k`` of the job that answers ``outputs``: every class's score for a plain
    ``probabilities`` output, else the most classes a classification output asks for.

    Every score is asked for as ``max(IMGQ_MAX_TOP_K, classes)``, which the worker cuts to the
    class count of the version that serves (a canary's included); the public ``top_k``
    ceiling does not apply, since the protocol's output is every class's score by definition.
    """
    ceiling = max(services().settings.max_top_k, classes)
    if any(not o.classification for o in outputs):
        return ceiling
    return min(max(o.classification for o in outputs), ceiling)


def _incomplete(classes: int) -> InvalidRequest:
    return InvalidRequest(
        f"The version that served has {classes} classes, more scores than this server returns "
        "(IMGQ_MAX_TOP_K); ask for the classification extension."
    )


def _output_tensor(
    requested: RequestedOutput, predictions: list[list[dict[str, Any]]], classes: int
) -> OutputTensor:
    """An output tensor from a predict job's top-k lists (complete lists, for the scores)."""
    k = min(requested.classification, classes) if requested.classification else classes
    if any(len(row) < k for row in predictions):
        raise _incomplete(classes)
    if requested.classification:
        values = [
            f"{p['score']:f}:{p['index']}:{p['label']}" for row in predictions for p in row[:k]
        ]
        return OutputTensor(requested.name, "BYTES", [len(predictions), k], values)
    scores = [0.0] * (len(predictions) * classes)
    for row_number, row in enumerate(predictions):
        for prediction in row:
            scores[row_number * classes + int(prediction["index"])] = float(prediction["score"])
    return OutputTensor(requested.name, "FP32", [len(predictions), classes], scores)


@blp.route("/models/<string:name>/infer", methods=["POST"], endpoint="infer")
@blp.route(
    "/models/<string:name>/versions/<string:version>/infer",
    methods=["POST"],
    endpoint="version_infer",
)
@blp.doc(
    requestBody=_INFER_BODY, parameters=[_HEADER_LENGTH_PARAMETER], responses={200: _INFER_ANSWER}
)
@protocol_errors(blp, 409, 415, 422)
def infer(name: str, version: str | None = None) -> Response:
    """Classify the images of input ``image``: class scores, or the top classes."""
    settings = services().settings
    body = inflate(  # read before anything looks at a form: curl -d sends one
        request.get_data(), request.headers.get("Content-Encoding"), settings.max_request_bytes
    )
    model, asked = requested_version(name, version)
    infer_request = read_infer_request(body, request.headers.get(HEADER_LENGTH), name)
    top_k = _top_k(infer_request.outputs, len(class_names(asked.labels)))
    options = {"model": name, "version": asked.version if version else None, "top_k": top_k}
    job_id, result = predict_now(
        infer_request.images, options, infer_request.timeout_s, max_top_k=top_k
    )
    served = asked if result["version"] == asked.version else version_of(model, result["version"])
    classes = len(class_names(served.labels))
    tensors = [
        (_output_tensor(output, result["predictions"], classes), output.binary)
        for output in infer_request.outputs
    ]
    header: dict[str, Any] = {
        "model_name": name,
        "model_version": str(result["version"]),
        "parameters": {"job_id": job_id},
    }
    if infer_request.request_id is not None:
        header["id"] = infer_request.request_id
    response = infer_response(header, tensors)
    response.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return response
