"""The prediction task: queued images are collected into batches and run in one forward pass.

Each predict job enqueues one message with its image indices (``job_id, index`` or ``job_id,
[index, ...]``), so images of several jobs share a batch; a reaper's resend may carry only
some of a job's images. ``celery-batches`` collects messages up to ``IMGQ_MAX_BATCH_SIZE``
(messages; each forward pass stays within that many images) or for
``IMGQ_MAX_BATCH_DELAY_MS``, whichever comes first, and ``workers.batching`` forms each batch
only when the model is free. Messages are acknowledged only after their results are stored,
and a batch that fails for a reason other than its images (Redis unreachable) gives its
messages back to the queue instead of losing them.

How a predict job ends: its last image's result completes it inside the ``STORE_PREDICTION``
Lua script (``imgq.jobs.predict_images``); an image that cannot be decoded, or a model that
cannot be loaded, fails the whole job (``workers.outcomes.fail_job``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace

import numpy as np
from celery_batches import SimpleRequest

from imgq.errors import ImgqError, InternalError
from imgq.jobs.predict_images import ImageResult, PredictTarget
from imgq.jobs.status import JobType
from imgq.queueing import PREDICT_IMAGE_TASK, message_images
from ml.preprocess import decode_image
from ml.registry import split_model_id
from workers.batching import DynamicBatches
from workers.context import WorkerApp, WorkerContext
from workers.metrics import BATCH_SIZE, DECODE_SECONDS, FORWARD_SECONDS, model_labels
from workers.outcomes import count_completed_predictions, fail_job

logger = logging.getLogger(__name__)

_Item = tuple[PredictTarget, int, bytes | None]


class BatchRunner:
    """Runs batches of image messages against the worker's models."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self._decoders = ThreadPoolExecutor(
            context.settings.decode_threads, thread_name_prefix="decode"
        )

    def run(self, requests: Sequence[SimpleRequest]) -> bool:
        """Run one batch of image messages; True once every result or failure is stored."""
        images = self.context.images
        refs = [ref for r in requests for ref in message_images(r.args)]
        targets, loaded = images.targets_and_images(sorted({job_id for job_id, _ in refs}), refs)
        live = [
            (job_id, index, image)
            for (job_id, index), image in zip(refs, loaded, strict=True)
            if targets[job_id] is not None
        ]
        if not live:
            return True  # every job ended or expired: nothing to do, ack
        self.context.jobs.mark_running(sorted({job_id for job_id, _, _ in live}))
        targets = self._pin_versions(targets)
        by_model: dict[tuple[str, int], list[_Item]] = defaultdict(list)
        for job_id, index, image in live:
            target = targets[job_id]
            if target is not None and target.version is not None:
                by_model[(target.model, target.version)].append((target, index, image))
        for (model, version), items in by_model.items():
            self._run_model(model, version, items)
        return True

    def _pin_versions(
        self, targets: dict[str, PredictTarget | None]
    ) -> dict[str, PredictTarget | None]:
        """Give every unpinned job the version this worker serves now (first image decides)."""
        wanted: dict[str, int] = {}
        for job_id, target in targets.items():
            if target is not None and target.version is None:
                try:
                    wanted[job_id] = self.context.models.serving_version(target.model)
                except ImgqError as exc:  # the model vanished from the registry
                    fail_job(self.context.jobs, JobType.PREDICT, job_id, exc)
                    targets[job_id] = None
        pinned = self.context.images.pin_versions(wanted) if wanted else {}
        return {
            job_id: (
                replace(target, version=pinned[job_id]) if job_id in pinned and target else target
            )
            for job_id, target in targets.items()
        }

    def _decode(self, image: bytes | None, size: tuple[int, int]) -> np.ndarray | ImgqError:
        if image is None:
            return InternalError("The image payload expired before it was processed.")
        try:
            return decode_image(image, size, self.context.image_limits)
        except ImgqError as exc:
            return exc

    def _run_model(self, model: str, version: int, items: list[_Item]) -> None:
        """Decode, predict and store one model's share of a batch."""
        jobs = self.context.jobs
        try:
            classifier = self.context.models.get(model, version)
        except ImgqError as exc:  # e.g. missing weights: fail these jobs, retrying cannot help
            logger.error("model unavailable", extra={"model": model, "code": exc.code})
            for target in {target for target, _, _ in items}:
                fail_job(jobs, JobType.PREDICT, target.job_id, exc)
            return
        with DECODE_SECONDS.time():
            decoded = list(
                self._decoders.map(lambda item: self._decode(item[2], classifier.image_size), items)
            )
        good = [
            (item, pixels)
            for item, pixels in zip(items, decoded, strict=True)
            if isinstance(pixels, np.ndarray)
        ]
        for (target, index, _), error in zip(items, decoded, strict=True):
            if isinstance(error, ImgqError):
                fail_job(jobs, JobType.PREDICT, target.job_id, error.with_details(image=index))
                logger.info("image rejected", extra={"job_id": target.job_id, "code": error.code})
        if not good:
            return
        BATCH_SIZE.labels(*model_labels(model)).observe(len(good))
        with FORWARD_SECONDS.labels(*model_labels(model)).time():
            probabilities = classifier.predict_proba(np.stack([pixels for _, pixels in good]))
        results = [
            ImageResult(
                target.job_id,
                index,
                [asdict(p) for p in classifier.top_k(row[None, :], target.top_k)[0]],
            )
            for ((target, index, _), _pixels), row in zip(good, probabilities, strict=True)
        ]
        latencies = self.context.images.store(
            split_model_id(model)[1],
            version,
            results,
            monitor=(model, self.context.settings.monitor_window),
        )
        count_completed_predictions(latencies)
        logger.debug(
            "batch done",
            extra={
                "model": model,
                "version": version,
                "batch_size": len(good),
                "jobs_completed": len(latencies),
            },
        )


def register_tasks(app: WorkerApp) -> None:
    """Register the batched ``imgq.predict_image`` task on a prediction worker's app."""
    settings = app.context.settings
    runner = BatchRunner(app.context)

    @app.task(
        shared=False,  # this app's task only, not every app's in the process
        name=PREDICT_IMAGE_TASK,
        base=DynamicBatches,
        flush_every=settings.max_batch_size,
        flush_interval=settings.max_batch_delay_ms / 1000.0,
        acks_late=True,
    )
    def predict_images(requests: Sequence[SimpleRequest]) -> bool:
        """Run one batch of image messages; True once every result or failure is stored."""
        return runner.run(requests)
