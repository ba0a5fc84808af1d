"""Grad-CAM: on the cat for the ImageNet model, the same map through a nested backbone."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from skimage import data

from ml.backbones import WeightSources, load_backbone
from ml.gradcam import gradcam, overlay_png
from ml.preprocess import ImageLimits, decode_image
from ml.train import ClassifierParts, TrainConfig, build_classifier
from ml.weights import load_lite_imagenet
from tests.support.images import jpeg_bytes
from tests.support.services import WEIGHTS_CACHE

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=40_000_000)
CAT_CLASSES = range(281, 286)

CAT_FACE_BOX = (110, 40, 370, 290)
"""(left, top, right, bottom) of the cat's face in chelsea's 451x300 pixels.

Picked by eye on a 25-pixel grid drawn over the photo, before any heatmap was computed: both
eyes, the nose and the muzzle, from the brow to the chin. The whole cat fills about 85% of
the frame, (0, 0, 385, 300), which leaves too little outside to tell a map that finds the
cat from a uniform one; the face is where the evidence for "cat" should be.
"""


@pytest.fixture(scope="module")
def imagenet_model() -> keras.Model:
    """The built-in model: pretrained EfficientNet-Lite0 with its ImageNet head."""
    return load_lite_imagenet("lite0", WEIGHTS_CACHE)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory) -> ClassifierParts:
    """A fine-tuned-shape classifier: augmentation, a nested random 64-px backbone, 3 classes."""
    sources = WeightSources(tmp_path_factory.mktemp("weights"))
    backbone = load_backbone("efficientnet_lite0", 64, pretrained=False, sources=sources)
    parts = build_classifier(backbone, 3, TrainConfig(augment=True))
    parts.backbone.trainable = False  # as train_classifier leaves it, and as it is served
    return parts


def _random_image(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _mass_inside(heatmap: np.ndarray, box: tuple[int, int, int, int]) -> float:
    left, top, right, bottom = box
    return float(heatmap[top:bottom, left:right].sum() / heatmap.sum())


def test_imagenet_heatmap_is_concentrated_on_the_cat_face(imagenet_model: keras.Model) -> None:
    photo = data.chelsea()
    height, width = photo.shape[:2]
    pixels = decode_image(jpeg_bytes(photo), (224, 224), LIMITS)
    heatmap, class_index = gradcam(imagenet_model, pixels)
    assert class_index in CAT_CLASSES
    assert heatmap.shape == (224, 224)
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0
    assert heatmap.max() == pytest.approx(1.0, abs=0.01)
    resized = Image.fromarray(heatmap).resize((width, height), Image.Resampling.BILINEAR)
    mass_inside = _mass_inside(np.asarray(resized), CAT_FACE_BOX)
    left, top, right, bottom = CAT_FACE_BOX
    area_fraction = (right - left) * (bottom - top) / (width * height)
    # Measured: 69% of the mass on 48% of the area.
    assert mass_inside >= 0.6
    assert mass_inside >= area_fraction + 0.15


def test_nested_backbone_gives_a_map_of_the_input_size(fine_tuned: ClassifierParts) -> None:
    image = _random_image(64)
    heatmap, class_index = gradcam(fine_tuned.model, image)
    assert heatmap.shape == (64, 64)
    assert heatmap.dtype == np.float32
    assert 0.0 <= heatmap.min() <= heatmap.max() <= 1.0
    assert class_index in range(3)
    heatmap, class_index = gradcam(fine_tuned.model, image, class_index=2)
    assert class_index == 2
    assert heatmap.shape == (64, 64)
    assert 0.0 <= heatmap.min() <= heatmap.max() <= 1.0


def test_nested_backbone_gives_the_same_map_as_the_flat_model(
    imagenet_model: keras.Model,
) -> None:
    # The ImageNet model's own layers, split as load_backbone and build_classifier split them.
    pooled = keras.layers.GlobalAveragePooling2D(name="features")(
        imagenet_model.get_layer("head_relu").output
    )
    backbone = keras.Model(imagenet_model.input, pooled, name="backbone")
    nested = build_classifier(backbone, 1000, TrainConfig())
    nested.head[-1].set_weights(imagenet_model.get_layer("logits").get_weights())
    pixels = decode_image(jpeg_bytes(data.chelsea()), (224, 224), LIMITS)
    flat_map, flat_class = gradcam(imagenet_model, pixels)
    nested_map, nested_class = gradcam(nested.model, pixels)
    assert nested_class == flat_class
    np.testing.assert_allclose(nested_map, flat_map, atol=1e-4)


def test_bad_class_index_and_image_size_are_rejected(fine_tuned: ClassifierParts) -> None:
    with pytest.raises(ValueError, match="class_index=3"):
        gradcam(fine_tuned.model, _random_image(64), class_index=3)
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        gradcam(fine_tuned.model, _random_image(32))


def test_overlay_is_a_png_of_the_original_photo_size() -> None:
    photo = data.chelsea()
    heatmap = np.tile(np.linspace(0.0, 1.0, 224, dtype=np.float32), (224, 1))
    overlay = Image.open(io.BytesIO(overlay_png(photo, heatmap)))
    assert overlay.format == "PNG"
    assert overlay.size == (photo.shape[1], photo.shape[0])
    assert overlay.mode == "RGB"
    untouched = Image.open(io.BytesIO(overlay_png(photo, heatmap, alpha=0.0)))
    np.testing.assert_array_equal(np.asarray(untouched), photo)


def test_a_grid_pooled_test_time_flip_model_explains_its_own_view(
    tmp_path: Path,
) -> None:
    """Grid pooling's 2 x 2 cells are skipped for the map before them; the mirror is left out."""
    backbone = load_backbone(
        "efficientnet_lite0", 64, pretrained=False, sources=WeightSources(tmp_path)
    )
    parts = build_classifier(backbone, 3, TrainConfig(pooling="grid", tta=True))
    parts.backbone.trainable = False
    image = _random_image(64)
    heatmap, class_index = gradcam(parts.model, image)
    assert heatmap.shape == (64, 64)
    assert class_index in range(3)
    assert 0.0 <= heatmap.min() <= heatmap.max() <= 1.0
