"""Exports of a model version for other runtimes, each checked by running it.

Formats:

* ``saved_model``: for TF Serving, with a ``serving_default`` signature that takes encoded image
  bytes (JPEG, PNG, …) and returns the top class names and scores, so clients need no
  preprocessing code of their own;
* ``tflite``: float32 TensorFlow Lite, pixels [0, 255] in, class probabilities out;
* ``tflite_dynamic``: weights quantized to 8 bits (dynamic range), float activations;
* ``tflite_int8``: full-integer, calibrated on a sample of the version's own training images,
  uint8 pixels in and uint8 scores out, for integer-only accelerators.

Every export is loaded back by its own runtime (the LiteRT interpreter, ``tf.saved_model.load``)
and run over the version's held-out test split: the report gives its size, its top-1
agreement with the Keras model and its accuracy, and flags a quantized export that loses more
accuracy than the configured margin.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from PIL import Image

from ml.export_formats import SAVED_MODEL_INPUT, SAVED_MODEL_OUTPUTS, SAVED_MODEL_TOP_K, file_name

CALIBRATION_FILE = "calibration.npz"
"""A sample of training images kept with each trained version (int8 calibration)."""
TEST_SPLIT_FILE = "test_split.npz"
"""The version's held-out test images and labels (export checks)."""
TOP_K = SAVED_MODEL_TOP_K
"""Classes the SavedModel signature returns per image."""


@dataclass(frozen=True)
class ExportReport:
    """What an export is and how faithful it is to the Keras model."""

    format: str
    file_name: str
    size_bytes: int
    test_images: int
    agreement: float
    accuracy: float
    keras_accuracy: float
    accuracy_drop: float
    within_margin: bool

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored beside the export."""
        return asdict(self)


def _png(image: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _export_saved_model(model: keras.Model, labels: list[str], folder: Path) -> Path:
    size = int(model.input_shape[1])
    names = tf.constant(labels)
    k = min(TOP_K, len(labels))

    def decode(encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        # Antialiased, as Pillow's downscale in ml.preprocess is: without it a 600x400 photo
        # scored 0.99 here against 0.69 from imgq's own serving (tests/test_tfserving_rest.py).
        return tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            decode, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32)
        )
        scores, indices = tf.math.top_k(model(pixels, training=False), k=k)
        return dict(zip(SAVED_MODEL_OUTPUTS, (tf.gather(names, indices), scores), strict=True))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[tf.TensorSpec([None], tf.string, name=SAVED_MODEL_INPUT)],
    )
    target = folder / "saved_model"
    archive.write_out(str(target), verbose=False)
    return target


def _convert_tflite(
    model: keras.Model, fmt: str, calibration: NDArray[np.uint8], folder: Path
) -> bytes:
    plain = folder / "plain_saved_model"
    model.export(str(plain), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(plain))
    if fmt in ("tflite_dynamic", "tflite_int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "tflite_int8":

        def representative() -> Iterator[list[NDArray[np.float32]]]:
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return bytes(converter.convert())


def run_tflite(content: bytes, images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Class scores from a TFLite model, one image at a time, (de)quantizing as it declares."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for image in images:
        pixels = image[None].astype(np.float32)
        if source["dtype"] != np.float32:
            scale, zero = source["quantization"]
            pixels = np.round(pixels / scale + zero)
        interpreter.set_tensor(source["index"], pixels.astype(source["dtype"]))
        interpreter.invoke()
        scores = interpreter.get_tensor(target["index"])[0].astype(np.float32)
        if target["dtype"] != np.float32:
            scale, zero = target["quantization"]
            scores = (scores - zero) * scale
        outputs.append(scores)
    return np.stack(outputs)


def _saved_model_top1(path: Path, images: NDArray[np.uint8], labels: list[str]) -> NDArray[Any]:
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    encoded = tf.constant([_png(image) for image in images])
    classes = signature(images=encoded)["classes"].numpy()[:, 0]
    index = {name: i for i, name in enumerate(labels)}
    return np.array([index[name.decode()] for name in classes])


def export_version(
    model: keras.Model,
    labels: list[str],
    fmt: str,
    version_dir: Path,
    out_dir: Path,
    *,
    margin: float,
) -> ExportReport:
    """Write one export of a trained version into ``out_dir`` and check it on the test split.

    Args:
        model: the version's Keras model.
        labels: its class names.
        fmt: one of ``FORMATS``.
        version_dir: a local copy of the version (test split and calibration sample).
        out_dir: where the export file is written (named by ``file_name``).
        margin: largest accuracy loss (0-1) a quantized export may show and still pass.

    Returns:
        The export's report; the file is ``out_dir / report.file_name``.
    """
    split = np.load(version_dir / TEST_SPLIT_FILE)
    images, truth = split["images"], split["labels"]
    keras_top1 = np.argmax(model.predict(images, verbose=0), axis=1)
    target = out_dir / file_name(fmt)
    with tempfile.TemporaryDirectory() as scratch:
        if fmt == "saved_model":
            folder = _export_saved_model(model, labels, Path(scratch))
            top1 = _saved_model_top1(folder, images, labels)
            shutil.make_archive(str(target.with_suffix("")), "zip", folder)
        else:
            calibration = np.load(version_dir / CALIBRATION_FILE)["images"]
            content = _convert_tflite(model, fmt, calibration, Path(scratch))
            target.write_bytes(content)
            top1 = np.argmax(run_tflite(content, images), axis=1)
    keras_accuracy = float(np.mean(keras_top1 == truth))
    accuracy = float(np.mean(top1 == truth))
    drop = keras_accuracy - accuracy
    return ExportReport(
        fmt,
        target.name,
        target.stat().st_size,
        len(truth),
        float(np.mean(top1 == keras_top1)),
        accuracy,
        keras_accuracy,
        round(drop, 6),
        drop <= margin,
    )
