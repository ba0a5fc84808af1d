"""Open Inference Protocol v2 bodies as marshmallow schemas: the OpenAPI document, and the
first check of an infer request's JSON header.

They follow kserve/open-inference-protocol ``specification/protocol/inference_rest.md`` (and
its ``open_inference_rest.yaml``). Request schemas ignore fields they do not know, as Triton
does: clients send ``model_name`` or Triton-only fields in the header, and a drop-in must not
refuse them. What a field must hold for imgq's one-input, one-output models is checked after
this, in ``api.oip_codec``, with messages in Triton's words.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

_PARAMETERS_DESCRIPTION = "Name -> string, number or boolean."


def _parameters() -> fields.Dict:
    return fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        metadata={"description": _PARAMETERS_DESCRIPTION},
    )


class ServerMetadataSchema(Schema):
    """``GET /v2``."""

    name = fields.String(required=True)
    version = fields.String(required=True)
    extensions = fields.List(fields.String(), required=True)


class ServerLiveSchema(Schema):
    """``GET /v2/health/live``."""

    live = fields.Boolean(required=True)


class ServerReadySchema(Schema):
    """``GET /v2/health/ready``."""

    ready = fields.Boolean(required=True)


class ModelReadySchema(Schema):
    """``GET /v2/models/<name>[/versions/<v>]/ready``."""

    name = fields.String(required=True)
    ready = fields.Boolean(required=True)


class TensorMetadataSchema(Schema):
    """A model input or output: name, data type and shape (-1 for a variable dimension)."""

    name = fields.String(required=True)
    datatype = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True)


class ModelMetadataSchema(Schema):
    """``GET /v2/models/<name>[/versions/<v>]``."""

    name = fields.String(required=True)
    versions = fields.List(fields.String())
    platform = fields.String(required=True)
    inputs = fields.List(fields.Nested(TensorMetadataSchema), required=True)
    outputs = fields.List(fields.Nested(TensorMetadataSchema), required=True)


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class RequestInputSchema(_Lenient):
    """An input tensor: ``data`` in the JSON, or ``parameters.binary_data_size`` bytes after it."""

    name = fields.String(required=True)
    shape = fields.List(fields.Integer(strict=True, validate=validate.Range(min=0)), required=True)
    datatype = fields.String(required=True)
    parameters = _parameters()
    data = fields.Raw(
        metadata={
            "description": "The elements, flat or nested; BYTES as strings "
            "(base64 when `parameters.content_type` is `base64`)."
        }
    )


class RequestOutputSchema(_Lenient):
    """A requested output: ``binary_data`` and ``classification`` parameters."""

    name = fields.String(required=True)
    parameters = _parameters()


class InferRequestSchema(_Lenient):
    """The infer request's JSON (the whole body, or its header with binary tensor data)."""

    id = fields.String()
    parameters = _parameters()
    inputs = fields.List(
        fields.Nested(RequestInputSchema), required=True, validate=validate.Length(min=1)
    )
    outputs = fields.List(fields.Nested(RequestOutputSchema))


class ResponseOutputSchema(Schema):
    """An output tensor: ``data`` in the JSON, or ``parameters.binary_data_size`` bytes after it."""

    name = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True)
    datatype = fields.String(required=True)
    parameters = _parameters()
    data = fields.List(fields.Raw())


class InferResponseSchema(Schema):
    """The infer answer's JSON (the whole body, or its header with binary tensor data)."""

    model_name = fields.String(required=True)
    model_version = fields.String()
    id = fields.String()
    parameters = _parameters()
    outputs = fields.List(fields.Nested(ResponseOutputSchema), required=True)
