"""Export format names and their file names, importable without TensorFlow (the API uses them)."""

from __future__ import annotations

FORMATS = ("saved_model", "tflite", "tflite_dynamic", "tflite_int8")
"""Export formats, as requested in ``POST .../exports``."""


def file_name(fmt: str) -> str:
    """The file an export is stored and downloaded as."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format. Received `fmt={fmt!r}`; expected {FORMATS}.")
    return "saved_model.zip" if fmt == "saved_model" else f"{fmt}.tflite"
