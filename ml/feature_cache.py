"""The frozen backbone's features, computed once and reused by every head phase 1 trains.

Phase 1 trains only the head, so the backbone's output for an image never changes: it is
computed once per image (and once per mirrored image when a flip may be tried), for both
poolings in the same pass, and every trial of a time budget, the final head and a distilled
student train on these arrays instead of running the backbone again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np
from numpy.typing import NDArray

from ml.backbones import pooled_features_model


@dataclass
class FeatureCache:
    """Features by split, pooling and view (``False``: as given, ``True``: mirrored)."""

    features: dict[tuple[str, str, bool], NDArray[np.float32]] = field(default_factory=dict)
    seconds_per_image: float = 0.0
    """What the backbone's forward pass took per image (what a fine-tune epoch will cost)."""

    @property
    def poolings(self) -> tuple[str, ...]:
        """The poolings the cache holds (``grid`` only when the backbone's map is reachable)."""
        return tuple(sorted({pooling for _, pooling, _ in self.features}))

    @property
    def has_flips(self) -> bool:
        """Whether mirrored images' features are cached too."""
        return any(flipped for _, _, flipped in self.features)

    def get(self, split: str, pooling: str, flipped: bool = False) -> NDArray[np.float32]:
        """One split's features.

        Raises:
            KeyError: that pooling or view was not extracted.
        """
        return self.features[(split, pooling, flipped)]


def extract_features(
    backbone: keras.Model,
    images_by_split: dict[str, NDArray[np.uint8]],
    *,
    flips: bool,
    batch_size: int,
) -> FeatureCache:
    """Run the frozen backbone once over each split's images (and their mirrors if ``flips``).

    Only the splits given are extracted: training passes ``train`` and ``validation``, never
    ``test``, so nothing chosen from these features has seen a test image.
    """
    extractor = pooled_features_model(backbone)
    cache = FeatureCache()
    started, passed = time.monotonic(), 0
    for split, images in images_by_split.items():
        for flipped in (False, True) if flips else (False,):
            view = images[:, :, ::-1] if flipped else images
            outputs = extractor.predict(view, batch_size=batch_size, verbose=0)
            passed += len(view)
            for pooling, values in outputs.items():
                cache.features[(split, pooling, flipped)] = np.asarray(values, dtype=np.float32)
    cache.seconds_per_image = (time.monotonic() - started) / max(passed, 1)
    return cache
