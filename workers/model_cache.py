"""Loaded classifiers kept per (model, version), so requests never pay for a model load.

A small LRU: the active version of each model stays hot, and a job pinned to an older
version loads it once and keeps it until newer work pushes it out. Loading happens under a lock
so two batches never load the same version twice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from imgq.settings import Settings
from ml.registry import ModelRegistry

if TYPE_CHECKING:
    from ml.classifier import Classifier


class ModelCache:
    """Thread-safe LRU of ``Classifier`` objects; TensorFlow is imported on first load."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.registry = ModelRegistry(settings.model_store)
        self._loaded: OrderedDict[tuple[str, int], Classifier] = OrderedDict()
        self._lock = threading.Lock()

    def ensure_default(self) -> None:
        """Register the built-in ImageNet classifier if the store has none yet."""
        self.registry.ensure_builtin(self._settings.default_backbone, time.time())

    def get(self, model: str, version: int) -> Classifier:
        """Return the loaded classifier, loading (and warming) it on first use."""
        key = (model, version)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            from ml.classifier import load_classifier  # TensorFlow loads here, after any fork

            classifier = load_classifier(
                self.registry.get(model, version),
                self.registry.version_dir(model, version),
                self._settings.weights_dir,
                self._settings.max_batch_size,
                self._settings.efficientnet_lite_checkpoint,
            )
            classifier.warm_up()
            self._loaded[key] = classifier
            while len(self._loaded) > self._settings.model_cache_size:
                self._loaded.popitem(last=False)
            return classifier

    def preload_active(self, model: str) -> Classifier:
        """Load a model's active version (used at worker start, before consuming)."""
        return self.get(model, self.registry.active_version(model))
