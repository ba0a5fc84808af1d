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
    base = app.factory(include_top=False, weights=weights, input_shape=shape, pooling=None)
    pooled = keras.layers.GlobalAveragePooling2D(name="features")(base(app.scaling(inputs)))
    return keras.Model(inputs, pooled, name="backbone")


POOLINGS: tuple[str, ...] = ("avg", "grid")
"""How a feature map becomes the head's input: its mean, or the means of a 2 x 2 grid of it."""


def feature_map(backbone: keras.Model) -> Any | None:
    """The backbone's last feature map before pooling, or None when it cannot be reached.

    Backbones from ``load_backbone`` pool in a layer named ``features`` (``grid_pool`` once
    ``with_pooling`` made a grid of them); older saved versions of ``keras.applications``
    backbones pool inside the application, and only average pooling is open to them.
    """
    for name in ("features", "grid_pool"):
        try:
            return backbone.get_layer(name).input
        except ValueError:
            continue
    return None


def grid_features(feature_map_output: Any) -> Any:
    """Means of a 2 x 2 grid over a feature map, flattened: where in the image a feature is.

    Global average pooling throws away the layout of the image, which carries the class of
    small, centred, greyscale pictures (digits, product photos); four cells keep a coarse one.
    """
    side = int(feature_map_output.shape[1])
    pool = keras.layers.AveragePooling2D(
        pool_size=(side + 1) // 2, padding="same", name="grid_pool"
    )
    return keras.layers.Flatten(name="grid_features")(pool(feature_map_output))


def with_pooling(backbone: keras.Model, pooling: str) -> keras.Model:
    """The backbone with its features pooled as ``pooling`` says (see ``POOLINGS``).

    Raises:
        ValueError: unknown pooling, or a grid asked of a backbone whose map is out of reach.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {list(POOLINGS)}. Received {pooling!r}.")
    if backbone_pooling(backbone) == pooling:
        return backbone
    fmap = feature_map(backbone)
    if fmap is None:
        raise ValueError("This backbone pools inside itself; only `pooling='avg'` applies.")
    pooled = (
        keras.layers.GlobalAveragePooling2D(name="features")(fmap)
        if pooling == "avg"
        else grid_features(fmap)
    )
    return keras.Model(backbone.input, pooled, name="backbone")


def backbone_pooling(backbone: keras.Model) -> str:
    """How a backbone pools its features now: ``grid`` or ``avg``."""
    try:
        backbone.get_layer("grid_pool")
    except ValueError:
        return "avg"
    return "grid"


def pooled_features_model(backbone: keras.Model) -> keras.Model:
    """One pass, both poolings: ``{"avg": ..., "grid": ...}`` features (only ``avg`` when the
    map is out of reach), for training heads of either kind on cached features."""
    fmap = feature_map(backbone)
    if fmap is None:
        return keras.Model(backbone.input, {"avg": backbone.output}, name="pooled_features")
    outputs = {
        "avg": keras.layers.GlobalAveragePooling2D(name="avg_features")(fmap),
        "grid": grid_features(fmap),
    }
    return keras.Model(backbone.input, outputs, name="pooled_features")
