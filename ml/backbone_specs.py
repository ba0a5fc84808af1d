"""Backbone names and their input sizes as plain data, importable without TensorFlow.

The API validates ``base`` and picks default image sizes from here; ``ml.backbones`` builds the
networks.
"""

from __future__ import annotations

VARIANTS: dict[str, tuple[float, float, int, float]] = {
    # name: (width, depth, resolution, dropout)
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
"""EfficientNet-Lite's compound-scaling coefficients of each published variant."""

KERAS_APP_SIZES: dict[str, int] = {
    "mobilenet_v2": 224,
    "efficientnet_b0": 224,
    "resnet50": 224,
    "xception": 299,
}
"""Backbones from ``keras.applications`` and the input size their weights were trained at."""

BACKBONE_SIZES: dict[str, int] = {
    **{f"efficientnet_{variant}": spec[2] for variant, spec in VARIANTS.items()},
    **KERAS_APP_SIZES,
}
"""Every backbone name imgq accepts, with its default square input size."""


def lite_resolution(backbone: str) -> int:
    """Input size of an ``efficientnet_liteN`` backbone name."""
    variant = backbone.removeprefix("efficientnet_")
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet-Lite backbone. Received `backbone={backbone!r}`; "
            f"expected one of {['efficientnet_' + v for v in VARIANTS]}."
        )
    return VARIANTS[variant][2]
