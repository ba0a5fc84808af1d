"""Export format names and their file names, importable without TensorFlow (the API uses them)."""

from __future__ import annotations

FORMATS = ("saved_model", "tflite", "tflite_dynamic", "tflite_int8")
"""Export formats, as requested in ``POST .../exports``."""

SAVED_MODEL_TOP_K = 5
"""Classes the SavedModel's ``serving_default`` signature returns per image (fewer if the
model has fewer); the API's TF Serving view answers with as many."""
SAVED_MODEL_INPUT = "images"
"""The signature's input: a batch of encoded images (``tf.string``, shape ``[None]``)."""
SAVED_MODEL_OUTPUTS = ("classes", "scores")
"""The signature's outputs: the top class names (``tf.string``) and their scores
(``tf.float32``), each ``[None, k]``, best first."""


def file_name(fmt: str) -> str:
    """The file an export is stored and downloaded as."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format. Received `fmt={fmt!r}`; expected {FORMATS}.")
    return "saved_model.zip" if fmt == "saved_model" else f"{fmt}.tflite"
