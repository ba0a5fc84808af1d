"""Loaded classifiers per (model, version), and hot-swapping to newly activated versions.

Each prediction worker serves, per model, one *serving* version (what unpinned jobs get) and
keeps a small LRU of other versions for jobs pinned to them. When a version is activated (an
announcement on Redis pub/sub, or the periodic check that backs it up), a watcher thread loads
and warms the new version beside the serving one and then switches: batches already running
finish on the old version, the next batch picks the new one, and no job waits for a load. A
version that fails to load leaves the old one serving and is logged and counted.

A *canary* is learnt the same way: the watcher loads and warms the canary version first, and
only then do unpinned jobs go to it, each with the canary's probability (a job's first image
decides for all of them, as for any unpinned job). Until it is loaded, or once it is removed,
every unpinned job gets the serving version, so a canary never fails a job.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import redis

from imgq.errors import ImgqError, ModelLoadFailed, ModelNotFound
from imgq.redis_keys import MODELS_CHANNEL
from imgq.settings import Settings
from ml.registry import ModelRegistry, prepare_store
from workers.metrics import ACTIVE_VERSION, MODEL_LOAD_FAILURES, model_labels

if TYPE_CHECKING:
    from ml.classifier import Classifier

logger = logging.getLogger(__name__)


class ModelCache:
    """Thread-safe cache of ``Classifier`` objects; TensorFlow is imported on first load."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.registry = ModelRegistry(settings.model_store, settings.model_cache_dir)
        self._loaded: OrderedDict[tuple[str, int], Classifier] = OrderedDict()
        self._serving: dict[str, int] = {}
        self._canaries: dict[str, tuple[int, float]] = {}  # model -> (version, traffic)
        self._random = random.Random()  # noqa: S311 (splits traffic; nothing secret)
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def ensure_default(self) -> str:
        """Get the store ready (see ``ml.registry.prepare_store``); returns the id of the model
        unpinned requests get by default: the shared model named ``IMGQ_DEFAULT_MODEL``."""
        builtin = prepare_store(
            self.registry,
            legacy_namespace=self._settings.legacy_model_owner,
            backbone=self._settings.default_backbone,
            created_at=time.time(),
        )
        return self.registry.shared_model(self._settings.default_model) or builtin

    def get(self, model: str, version: int) -> Classifier:
        """Return the loaded classifier, loading and warming it on first use.

        The load happens outside the cache lock, so batches for other versions keep running
        while a new version loads.
        """
        key = (model, version)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            classifier = self._load(model, version)
            with self._lock:
                self._loaded[key] = classifier
                self._evict()
                self._loading.pop(key, None)
            return classifier

    def _load(self, model: str, version: int) -> Classifier:
        from ml.classifier import load_classifier  # TensorFlow loads here, never before a fork
        from ml.runtime import inference_lanes

        meta = self.registry.get(model, version)
        try:
            classifier = load_classifier(
                meta,
                self.registry.local_version_dir(model, version),
                self._settings.weights_dir,
                self._settings.max_batch_size,
                self._settings.efficientnet_lite_checkpoint,
                lanes=inference_lanes(self._settings.inference_lanes),
                lane_batch=self._settings.lane_batch_size,
            )
            classifier.warm_up()
        except ImgqError:
            raise
        except Exception as exc:  # a corrupt or incompatible model file, whatever Keras raises
            raise ModelLoadFailed(
                f"Model {model!r} version {version} could not be loaded: {exc}",
                {"model": model, "version": version},
            ) from exc
        return classifier

    def _evict(self) -> None:
        """Keep at most ``IMGQ_MODEL_CACHE_SIZE`` versions loaded, whatever clients ask for:
        versions nothing routes to go first, then the least recently used served ones (their
        model loads again on its next job), so pinned requests cannot grow the cache."""
        limit = self._settings.model_cache_size
        routed = {(model, version) for model, version in self._serving.items()}
        routed |= {(model, version) for model, (version, _) in self._canaries.items()}
        for key in [key for key in self._loaded if key not in routed]:  # oldest first
            if len(self._loaded) <= limit:
                return
            del self._loaded[key]
        canaries = {(model, version) for model, (version, _) in self._canaries.items()}
        for key in [key for key in self._loaded if key not in canaries]:
            if len(self._loaded) <= limit:
                return
            del self._loaded[key]  # canaries stay: they were loaded to be judged
            model, version = key
            if self._serving.get(model) == version:
                del self._serving[model]

    def serving_version(self, model: str) -> int:
        """The version an unpinned job of ``model`` gets: the canary with its probability once
        it is loaded, else the active one (loaded on first use)."""
        with self._lock:
            canary = self._canaries.get(model)
            if canary is not None and self._random.random() < canary[1]:
                return canary[0]
            if model in self._serving:
                return self._serving[model]
        version = self.registry.active_version(model)
        self.get(model, version)
        with self._lock:
            self._serving.setdefault(model, version)
            ACTIVE_VERSION.labels(*model_labels(model)).set(self._serving[model])
            return self._serving[model]

    def refresh(self, model: str) -> None:
        """Swap ``model`` to its active version if that changed, and follow its canary; keep
        what is serving on failure."""
        with self._lock:
            current = self._serving.get(model)
        try:
            wanted = self.registry.active_version(model)
            self._refresh_canary(model, wanted)
            if wanted == current:
                return
            self.get(model, wanted)
        except ModelNotFound:
            self._forget(model)  # deleted: nothing left to serve or to watch
            return
        except ImgqError as exc:
            MODEL_LOAD_FAILURES.labels(*model_labels(model)).inc()
            logger.error(
                "could not load new version; keeping the serving one",
                extra={"model": model, "serving": current, "error": str(exc)},
            )
            return
        with self._lock:
            self._serving[model] = wanted
        ACTIVE_VERSION.labels(*model_labels(model)).set(wanted)
        logger.info("now serving", extra={"model": model, "version": wanted, "previous": current})

    def _refresh_canary(self, model: str, active: int) -> None:
        """Load the model's canary before it gets traffic; drop one that ended."""
        canary = self.registry.canary(model)
        if canary is None or canary["version"] == active:
            with self._lock:
                ended = self._canaries.pop(model, None)
            if ended is not None:
                logger.info("canary ended", extra={"model": model, "version": ended[0]})
            return
        version, traffic = int(canary["version"]), float(canary["traffic"])
        try:
            self.get(model, version)  # loaded and warmed before any job is sent to it
        except ImgqError as exc:
            MODEL_LOAD_FAILURES.labels(*model_labels(model)).inc()
            logger.error(
                "could not load the canary; unpinned jobs stay on the active version",
                extra={"model": model, "canary": version, "error": str(exc)},
            )
            return
        with self._lock:
            previous = self._canaries.get(model)
            self._canaries[model] = (version, traffic)
        if previous != (version, traffic):
            logger.info(
                "canary serving", extra={"model": model, "version": version, "traffic": traffic}
            )

    def _forget(self, model: str) -> None:
        with self._lock:
            self._serving.pop(model, None)
            self._canaries.pop(model, None)
            for key in [key for key in self._loaded if key[0] == model]:
                del self._loaded[key]
        logger.info("model deleted; no longer served", extra={"model": model})

    def watch(self, client: redis.Redis, interval_s: float) -> threading.Thread:
        """Start the watcher thread: announcements swap at once, a periodic check backs them up."""
        thread = threading.Thread(
            target=self._watch, args=(client, interval_s), name="model-watcher", daemon=True
        )
        thread.start()
        return thread

    def _watch(self, client: redis.Redis, interval_s: float) -> None:
        next_check = time.monotonic() + interval_s
        while True:
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(MODELS_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=max(0.1, next_check - time.monotonic()))
                    if message is not None:
                        self.refresh(message["data"].decode())
                    if time.monotonic() >= next_check:
                        for model in list(self._serving):
                            self.refresh(model)
                        next_check = time.monotonic() + interval_s
            except redis.RedisError as exc:
                logger.warning("model watcher lost redis: %s", exc)
                time.sleep(1.0)
