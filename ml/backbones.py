"""Pretrained backbones by name, each taking RGB pixels in [0, 255] with its own scaling inside.

A backbone name is what users pass as ``base`` to a fine-tune job. Every entry knows its
default input size, how its ImageNet weights are found offline, and the input scaling its
weights were trained with, which is baked into the model so a saved classifier cannot be fed
the wrong preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from ml.backbone_specs import BACKBONE_SIZES
from ml.efficientnet_lite import build_efficientnet_lite
from ml.layers import CaffePreprocess
from ml.weights import converted_lite_weights, find_weights_file, lite_checkpoint_path


@dataclass(frozen=True)
class WeightSources:
    """Where pretrained weights are looked up (see ``ml.weights``)."""

    weights_dir: Path
    lite_checkpoint: Path | None = None


@dataclass(frozen=True)
class _KerasApp:
    factory: Callable[..., keras.Model]
    weights_file: str
    scaling: Callable[[Any], Any]


def _scale_minus_one_to_one(x: Any) -> Any:
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x)


def _caffe(x: Any) -> Any:
    return CaffePreprocess(name="caffe_preprocess")(x)


def _identity(x: Any) -> Any:
    return x  # EfficientNetB0 scales its own input


_KERAS_APPS: dict[str, _KerasApp] = {
    "mobilenet_v2": _KerasApp(
        keras.applications.MobileNetV2,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        _scale_minus_one_to_one,
    ),
    "efficientnet_b0": _KerasApp(
        keras.applications.EfficientNetB0, "efficientnetb0_notop.h5", _identity
    ),
    "resnet50": _KerasApp(
        keras.applications.ResNet50,
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _caffe,
    ),
    "xception": _KerasApp(
        keras.applications.Xception,
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _scale_minus_one_to_one,
    ),
}

BACKBONES: tuple[str, ...] = tuple(BACKBONE_SIZES)
"""Every backbone name imgq accepts."""


def default_image_size(name: str) -> int:
    """The square input size a backbone's weights were trained at."""
    _check_name(name)
    return BACKBONE_SIZES[name]


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone. Received `name={name!r}`; expected one of {list(BACKBONES)}."
        )


def load_backbone(
    name: str, image_size: int, pretrained: bool, sources: WeightSources
) -> keras.Model:
    """Build a feature extractor: pixels in [0, 255] to a pooled feature vector.

    Args:
        name: one of ``BACKBONES``.
        image_size: square input size in pixels (at least 32).
        pretrained: load ImageNet weights (from local files) or start from random weights.
        sources: where local weights are found.

    Returns:
        A ``keras.Model`` named ``backbone`` with a 1-D feature output.

    Raises:
        WeightsNotFound: ``pretrained`` and no local weights.
        ValueError: unknown name or too small an image size.
    """
    _check_name(name)
    if image_size < 32:
        raise ValueError(f"`image_size` must be at least 32. Received {image_size}.")
    shape = (image_size, image_size, 3)
    if name.startswith("efficientnet_lite"):
        variant = name.removeprefix("efficientnet_")
        full = build_efficientnet_lite(variant, input_shape=shape, include_top=True)
        if pretrained:
            checkpoint = lite_checkpoint_path(variant, sources.lite_checkpoint)
            full.load_weights(converted_lite_weights(variant, checkpoint, sources.weights_dir))
        pooled = keras.layers.GlobalAveragePooling2D(name="features")(
            full.get_layer("head_relu").output
        )
        return keras.Model(full.input, pooled, name="backbone")
    app = _KERAS_APPS[name]
    weights = str(find_weights_file(app.weights_file, sources.weights_dir)) if pretrained else None
    inputs = keras.Input(shape=shape, name="image")
    base = app.factory(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    return keras.Model(inputs, base(app.scaling(inputs)), name="backbone")
