"""Open Inference Protocol v2 infer bodies: JSON tensors and Triton's binary tensor extension.

An infer request is a JSON object, or, with Triton's binary tensor data extension, a JSON
header followed by the tensors' raw bytes (``api.oip_binary``), where encoded images travel as
they are. In JSON, BYTES elements are strings, base64 when ``parameters.content_type`` is
``base64`` (as MLServer reads them; a JSON string cannot hold an image's raw bytes). A header
length of 0 is Triton's raw binary request: the whole body is the one input's one element.
``tritonclient.http`` sends binary inputs and asks for binary outputs unless told otherwise.

imgq's models all take one input, ``image`` (BYTES, one encoded image per element), and give
one output, ``probabilities`` (FP32, a row of class scores per image), or, with Triton's
classification extension (``parameters.classification: k``), the top ``k`` as BYTES strings
``"<score>:<index>:<label>"``. Each output comes back as JSON or binary as the request asked
(``binary_data`` per output, else the request's ``binary_data_output``). Messages follow
Triton's where it has one for the same mistake.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Response
from marshmallow import ValidationError

from api.oip_binary import HEADER_LENGTH, bytes_elements, packed, read_header_length
from api.oip_schemas import InferRequestSchema
from imgq.errors import InvalidRequest

INPUT_NAME = "image"
"""The one input of every imgq model: encoded images, one per element."""
OUTPUT_NAME = "probabilities"
"""The one output: each image's score for every class, in class-index order."""


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request asks for, and how."""

    name: str
    binary: bool
    classification: int
    """Top classes to return as ``"score:index:label"`` strings; 0 for the scores themselves."""


@dataclass(frozen=True)
class InferRequest:
    """What an infer request asks, once read."""

    request_id: str | None
    images: list[bytes]
    outputs: tuple[RequestedOutput, ...]
    timeout_s: float | None
    """The request's ``parameters.timeout`` (Triton's, in microseconds), in seconds."""


@dataclass(frozen=True)
class OutputTensor:
    """An output tensor, its elements flat in row-major order."""

    name: str
    datatype: str
    shape: list[int]
    values: Sequence[float] | Sequence[str]


def _flag(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"Unable to parse '{name}': expected a boolean, got {value!r}.")
    return value


def _count(parameters: dict[str, Any], name: str) -> int:
    value = parameters.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"Unable to parse '{name}': expected a whole number, got {value!r}.")
    return value


def _element_count(shape: list[int]) -> int:
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return shape[0]
    raise InvalidRequest(
        f"input '{INPUT_NAME}' has shape {shape}; expected [N] (or [N, 1]), one image each."
    )


def _flat(data: Any) -> list[Any]:
    """The elements of a tensor's ``data``, flat or nested lists, in row-major order."""
    if not isinstance(data, list):
        raise InvalidRequest(f"The data of input '{INPUT_NAME}' must be a list.")
    elements: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], stack)
        if item is stack:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            elements.append(item)
    return elements


def _json_elements(data: Any, content_type: Any) -> list[bytes]:
    """BYTES elements given as JSON strings: as UTF-8, or base64 as ``content_type`` says."""
    if content_type not in (None, "str", "base64"):
        raise InvalidRequest(
            f"content_type {content_type!r} of input '{INPUT_NAME}' is not supported; "
            "use 'base64' (or 'str')."
        )
    elements = []
    for index, element in enumerate(_flat(data)):
        if not isinstance(element, str):
            raise InvalidRequest(f"Element {index} of BYTES input '{INPUT_NAME}' is not a string.")
        if content_type != "base64":
            elements.append(element.encode())
            continue
        try:
            elements.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(
                f"Element {index} of input '{INPUT_NAME}' is not valid base64.", {"image": index}
            ) from exc
    return elements


def _input_images(tensor: dict[str, Any], binary: bytes, model: str) -> list[bytes]:
    if tensor["name"] != INPUT_NAME:
        raise InvalidRequest(
            f"unexpected inference input '{tensor['name']}' for model '{model}'; "
            f"its input is '{INPUT_NAME}'"
        )
    if tensor["datatype"] != "BYTES":
        raise InvalidRequest(
            f"inference input '{INPUT_NAME}' data-type is '{tensor['datatype']}', but model "
            f"'{model}' expects 'BYTES'"
        )
    count = _element_count(tensor["shape"])
    parameters = tensor.get("parameters", {})
    if "shared_memory_region" in parameters:
        raise InvalidRequest("imgq does not support shared-memory tensors; send the data.")
    if ("data" in tensor) == ("binary_data_size" in parameters):
        raise InvalidRequest(
            "Input must set only one of the following fields: 'data', 'binary_data_size' "
            "in 'parameters'."
        )
    if "data" in tensor:
        if binary:
            raise InvalidRequest("Binary data follows the header, but no input declares it.")
        images = _json_elements(tensor["data"], parameters.get("content_type"))
    else:
        size = _count(parameters, "binary_data_size")
        if size != len(binary):
            raise InvalidRequest(
                f"input '{INPUT_NAME}' declares binary_data_size {size}, but {len(binary)} "
                "bytes follow the header."
            )
        images = bytes_elements(binary, INPUT_NAME)
    if len(images) != count:
        raise InvalidRequest(
            f"input '{INPUT_NAME}' has shape {tensor['shape']} ({count} elements), but "
            f"{len(images)} were sent."
        )
    return images


def _requested_outputs(
    requested: list[dict[str, Any]] | None, default_binary: bool, model: str
) -> tuple[RequestedOutput, ...]:
    if not requested:  # none named: every output, in the request's default form
        return (RequestedOutput(OUTPUT_NAME, default_binary, 0),)
    outputs = []
    for output in requested:
        parameters = output.get("parameters", {})
        if output["name"] != OUTPUT_NAME:
            raise InvalidRequest(
                f"unexpected inference output '{output['name']}' for model '{model}'; "
                f"its output is '{OUTPUT_NAME}'"
            )
        if "shared_memory_region" in parameters:
            raise InvalidRequest("imgq does not support shared-memory tensors.")
        binary = _flag(parameters, "binary_data", default_binary)
        outputs.append(RequestedOutput(OUTPUT_NAME, binary, _count(parameters, "classification")))
    if len(outputs) > 1:
        raise InvalidRequest(f"Output '{OUTPUT_NAME}' is requested more than once.")
    return tuple(outputs)


def _request_header(text: bytes) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"The inference request is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("The inference request must be a JSON object.")
    try:
        fields: dict[str, Any] = InferRequestSchema().load(document)
    except ValidationError as exc:
        raise InvalidRequest(
            f"The inference request does not match the protocol: "
            f"{json.dumps(exc.messages, sort_keys=True)}"
        ) from None
    return fields


def read_infer_request(body: bytes, header_length: str | None, model: str) -> InferRequest:
    """Read an infer request of either form.

    Args:
        body: the whole (inflated) body.
        header_length: the ``Inference-Header-Content-Length`` header, if sent.
        model: the model's name as the client gave it, for messages.

    Raises:
        InvalidRequest: the body is not a valid request for this model (400).
    """
    length = len(body) if header_length is None else read_header_length(header_length, len(body))
    if length == 0:  # raw binary request: the body is one image, every output binary
        return InferRequest(None, [body], (RequestedOutput(OUTPUT_NAME, True, 0),), None)
    fields = _request_header(body[:length])
    parameters = fields.get("parameters", {})
    if any(str(key).startswith("triton_") for key in parameters):
        raise InvalidRequest(
            "parameter keys starting with 'triton_' are reserved for Triton usage and should "
            "not be specified."
        )
    if len(fields["inputs"]) != 1:
        raise InvalidRequest(
            f"expected 1 inputs but got {len(fields['inputs'])} inputs for model '{model}'"
        )
    timeout_us = _count(parameters, "timeout")
    return InferRequest(
        fields.get("id"),
        _input_images(fields["inputs"][0], body[length:], model),
        _requested_outputs(
            fields.get("outputs"), _flag(parameters, "binary_data_output", False), model
        ),
        timeout_us / 1e6 if timeout_us else None,
    )


def infer_response(
    header: dict[str, Any], outputs: Sequence[tuple[OutputTensor, bool]]
) -> Response:
    """The infer answer: JSON, or a JSON header and binary data when an output is binary.

    Args:
        header: ``model_name``, ``model_version``, ``id``, ``parameters`` of the answer.
        outputs: each output tensor, and whether it goes as binary data.
    """
    described, blobs = [], []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            blob = packed(tensor.datatype, tensor.values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = list(tensor.values)
        described.append(entry)
    head = json.dumps({**header, "outputs": described}, separators=(",", ":")).encode()
    if not blobs:
        return Response(head, mimetype="application/json")
    response = Response(head + b"".join(blobs), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(head))
    return response
