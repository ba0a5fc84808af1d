"""Grad-CAM: where in an image a classifier found the evidence for a class.

A prediction alone does not tell a user whether the model looked at the object or at the
background it usually appears on. Grad-CAM (Selvaraju et al., 2017) answers that from one
forward and one backward pass: the last convolutional feature map is weighted, channel by
channel, by how much the class score grows with it, and the positive part of the sum is a
coarse map of the evidence, upsampled to the input size.

imgq serves two shapes of model and both are handled here: a flat network whose last 4-D
layer is reachable directly (the built-in EfficientNet-Lite ImageNet models), and a
fine-tuned classifier whose backbone is a nested ``keras.Model`` followed by a head (built by
``ml.train.build_classifier``). Keras 3 cannot build a model from an outer input to a layer
inside a nested model, so the nested case runs the outer layers one by one around an inner
model that exposes the feature map; the outer model must then be a chain of single-input
layers, as ``build_classifier`` and ``ml.backbones.load_backbone`` make it.
"""

from __future__ import annotations

import io
from typing import Any

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray
from PIL import Image

from ml.layers import HorizontalFlip

_SOFTMAX_LAYERS = (keras.layers.Activation, keras.layers.Softmax)
_POOLING_LAYERS = (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)
_SECOND_VIEW_LAYERS = (HorizontalFlip, keras.layers.Average)


def gradcam(
    model: keras.Model, image: NDArray[np.uint8], class_index: int | None = None
) -> tuple[NDArray[np.float32], int]:
    """Explain one prediction with a Grad-CAM heatmap over the input image.

    The class score is the pre-softmax logit when the model's last layer is a softmax (a
    separate activation layer, or a ``Dense`` with a softmax activation); otherwise the
    model's own output. Logits avoid the vanishing gradients of a saturated softmax and do
    not credit evidence *against* the other classes.

    Args:
        model: an imgq classifier taking raw RGB pixels (0..255, float32) and returning
            one row of class scores per image.
        image: one ``(height, width, 3)`` uint8 RGB image, already resized to the model's
            input size.
        class_index: the class to explain; defaults to the top predicted class.

    Returns:
        A float32 ``(height, width)`` heatmap in [0, 1] (all zeros when no location
        raises the class score) and the index of the class it explains.

    Raises:
        ValueError: ``image`` is not a uint8 RGB image of the model's input size,
            ``class_index`` is out of range, or the model has no 4-D feature map.
    """
    _check_image(model, image)
    if len(model.output.shape) != 2:
        raise ValueError(
            "`model` must output one row of class scores per image. "
            f"Received a model with output shape {tuple(model.output.shape)}."
        )
    batch = tf.constant(image[None], dtype=tf.float32)
    with tf.GradientTape() as tape:
        # Record the whole forward pass from the input, whatever the variables' trainable flags.
        tape.watch(batch)
        feature_map, scores = _run(model, batch, logits=True)
        explained = _class_to_explain(scores, class_index)
        score = scores[:, explained]
    gradients = tape.gradient(score, feature_map)
    feature_map = tf.cast(feature_map, tf.float32)[0]
    channel_weights = tf.reduce_mean(tf.cast(gradients, tf.float32)[0], axis=(0, 1))
    cam = tf.nn.relu(tf.reduce_sum(feature_map * channel_weights, axis=-1))
    peak = float(tf.reduce_max(cam))
    cam = cam / peak if peak > 0 else tf.zeros_like(cam)
    heatmap = tf.image.resize(cam[..., None], image.shape[:2], method="bilinear")[..., 0]
    return np.clip(heatmap.numpy(), 0.0, 1.0).astype(np.float32), explained


def overlay_png(
    image: NDArray[np.uint8], heatmap: NDArray[np.float32], alpha: float = 0.45
) -> bytes:
    """Encode a heatmap blended over an image as PNG, for a person to look at.

    The heatmap is resized (bilinear) to the image when their sizes differ, so a map computed
    at the model's input size can be laid over the original, un-resized photo.

    Args:
        image: ``(height, width, 3)`` uint8 RGB image.
        heatmap: 2-D map with values in [0, 1], as ``gradcam`` returns.
        alpha: weight of the "jet"-coloured heatmap in the blend, in [0, 1].

    Returns:
        The PNG file's bytes, ``width`` x ``height`` pixels, RGB.

    Raises:
        ValueError: ``image`` is not uint8 RGB, ``heatmap`` is not 2-D, or ``alpha`` is
            outside [0, 1].
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(
            "`image` must be a (height, width, 3) uint8 array. "
            f"Received shape {image.shape} and dtype {image.dtype}."
        )
    if heatmap.ndim != 2:
        raise ValueError(f"`heatmap` must be 2-D. Received shape {heatmap.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]. Received alpha={alpha}.")
    height, width = image.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (height, width):
        resized = Image.fromarray(heat).resize((width, height), Image.Resampling.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32)
    colours = matplotlib.colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    buffer = io.BytesIO()
    Image.fromarray(np.rint(blended).clip(0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _check_image(model: keras.Model, image: NDArray[np.uint8]) -> None:
    expected = tuple(model.input.shape[1:])
    if (
        image.ndim != 3
        or image.dtype != np.uint8
        or image.shape[-1] != 3
        or any(size not in (None, got) for size, got in zip(expected, image.shape, strict=True))
    ):
        raise ValueError(
            f"`image` must be one uint8 RGB image of the model's input size {expected}. "
            f"Received shape {image.shape} and dtype {image.dtype}."
        )


def _class_to_explain(scores: Any, class_index: int | None) -> int:
    num_classes = int(scores.shape[-1])
    if class_index is None:
        return int(tf.argmax(scores[0]))
    if not 0 <= class_index < num_classes:
        raise ValueError(
            f"`class_index` must be in [0, {num_classes}). Received class_index={class_index}."
        )
    return class_index


def _feature_layer_index(model: keras.Model) -> int:
    """Index of the last layer that outputs a 4-D map or is a nested image model."""
    for index in reversed(range(len(model.layers))):
        layer = model.layers[index]
        if isinstance(layer, (keras.layers.InputLayer, *_POOLING_LAYERS)):
            continue  # a grid's pooled cells are too coarse to show where the evidence is
        if isinstance(layer, keras.Model):
            if len(layer.input.shape) == 4:
                return index
        elif len(layer.output.shape) == 4:
            return index
    raise ValueError(f"Model {model.name!r} has no 4-D (convolutional) feature map to explain.")


def _run(model: keras.Model, images: Any, *, logits: bool) -> tuple[Any, Any]:
    """Forward pass returning the last 4-D feature map and the output (or its logits)."""
    index = _feature_layer_index(model)
    feature_layer, last = model.layers[index], model.layers[-1]
    if not isinstance(feature_layer, keras.Model):
        if not logits:
            inner = keras.Model(model.input, [feature_layer.output, model.output])
            return inner(images, training=False)
        inner = keras.Model(model.input, [feature_layer.output, last.input])
        feature_map, head_input = inner(images, training=False)
        return feature_map, _scores(last, head_input)
    x = images
    for layer in model.layers[1:index]:  # e.g. augmentation, input scaling
        if not isinstance(layer, _SECOND_VIEW_LAYERS):
            x = layer(x, training=False)
    # With test-time flip the image's own view is explained: its mirror and the mean over both
    # views are left out (the mean of one view is that view).
    after = [
        layer for layer in model.layers[index + 1 :] if not isinstance(layer, _SECOND_VIEW_LAYERS)
    ]
    feature_map, x = _run(feature_layer, x, logits=logits and not after)
    for position, layer in enumerate(after):
        x = _scores(layer, x) if logits and position == len(after) - 1 else layer(x, training=False)
    return feature_map, x


def _scores(layer: Any, x: Any) -> Any:
    """The final layer's output, with its softmax left off when it has one."""
    softmax = keras.activations.softmax
    if isinstance(layer, _SOFTMAX_LAYERS) and getattr(layer, "activation", softmax) is softmax:
        return x
    if (
        isinstance(layer, keras.layers.Dense)
        and layer.activation is softmax
        and not getattr(layer, "quantization_mode", None)
    ):
        logits = keras.ops.matmul(keras.ops.cast(x, layer.compute_dtype), layer.kernel)
        return logits if layer.bias is None else keras.ops.add(logits, layer.bias)
    return layer(x, training=False)
