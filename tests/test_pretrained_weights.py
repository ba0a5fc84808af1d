"""The converted EfficientNet-Lite0 ImageNet weights: stable, cached, and actually right."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from imgq.errors import WeightsNotFound
from ml.classifier import Classifier
from ml.preprocess import ImageLimits, decode_image
from ml.registry import ModelVersion
from ml.torch_checkpoint import CheckpointError, load_state_dict
from ml.weights import lite_checkpoint_path, load_lite_imagenet
from tests.support.images import jpeg_bytes

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=40_000_000)
CAT_CLASSES = {281, 282, 283, 284, 285}


def _pixels(array: np.ndarray) -> np.ndarray:
    return decode_image(jpeg_bytes(array), (224, 224), LIMITS)[None]


@pytest.fixture(scope="module")
def fresh_and_cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    weights_dir = tmp_path_factory.mktemp("weights")
    converted = load_lite_imagenet("lite0", weights_dir)  # converts the .pth
    assert len(list(weights_dir.glob("*.weights.h5"))) == 1
    cached = load_lite_imagenet("lite0", weights_dir)  # reads the cached .weights.h5
    return converted, cached


def test_logits_are_identical_between_conversion_and_cached_load(
    fresh_and_cached: tuple[object, object],
) -> None:
    converted, cached = fresh_and_cached
    image = _pixels(data.chelsea()).astype("float32")
    logits = [_logits(model, image) for model in (converted, cached)]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-4)
    assert logits[0].shape == (1, 1000)


def _logits(model: object, image: np.ndarray) -> np.ndarray:
    import keras

    assert isinstance(model, keras.Model)
    head = keras.Model(model.input, model.get_layer("logits").output)
    return np.asarray(head(image, training=False))


def test_cat_and_coffee_photos_get_their_imagenet_classes(
    fresh_and_cached: tuple[object, object],
) -> None:
    _, model = fresh_and_cached
    version = ModelVersion("imagenet", 1, "builtin", "efficientnet_lite0", 224, "imagenet1k", 0.0)
    classifier = Classifier(version, model, max_batch=4)
    batch = np.concatenate([_pixels(data.chelsea()), _pixels(data.coffee())])
    cat, coffee = classifier.top_k(classifier.predict_proba(batch), 3)
    assert cat[0].index in CAT_CLASSES
    assert coffee[0].label == "espresso"
    assert coffee[0].score > 0.5


def test_unknown_variant_without_package_or_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="IMGQ_EFFICIENTNET_LITE_CHECKPOINT"):
        lite_checkpoint_path("lite4", None)
    with pytest.raises(WeightsNotFound, match="does not exist"):
        lite_checkpoint_path("lite0", tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned",))


def test_checkpoint_reader_refuses_pickles_that_name_other_callables(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    buffer = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buffer)
    pickle.dump(_Evil(), buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="not admitted"):
        load_state_dict(path)


def test_zip_checkpoints_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises((CheckpointError, pickle.UnpicklingError)):
        load_state_dict(path)
