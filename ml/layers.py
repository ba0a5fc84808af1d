"""Serializable preprocessing layers, so a saved ``.keras`` model carries its own input scaling."""

from __future__ import annotations

from typing import Any

import keras

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="imgq")
class CaffePreprocess(keras.layers.Layer):
    """RGB [0, 255] to mean-subtracted BGR, the input ResNet50's ImageNet weights expect."""

    def call(self, inputs: Any) -> Any:
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=inputs.dtype)


@keras.saving.register_keras_serializable(package="imgq")
class HorizontalFlip(keras.layers.Layer):
    """Mirror images left to right, always (test-time augmentation's second view)."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.flip(inputs, axis=-2)
