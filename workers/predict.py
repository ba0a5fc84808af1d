"""The prediction task: queued images are collected into batches and run in one forward pass.

Each predict job enqueues one message per image (``job_id, index``), so images of several jobs
share a batch and one job's images may span batches. ``celery-batches`` collects messages up to
``IMGQ_MAX_BATCH_SIZE`` or for ``IMGQ_MAX_BATCH_DELAY_MS``, whichever comes first, and
``workers.batching`` forms each batch only when the model is free. Messages are acknowledged
only after their results are stored, and a batch that fails for a reason other than its images
(Redis unreachable) gives its messages back to the queue instead of losing them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace

import numpy as np
import redis
from celery_batches import SimpleRequest

from imgq.errors import ImgqError
from imgq.jobs import JobStore, PredictTarget
from imgq.queueing import PREDICT_IMAGE_TASK
from ml.preprocess import ImageLimits, decode_image
from workers.batching import DynamicBatches
from workers.celery_app import app, settings
from workers.metrics import (
    BATCH_SIZE,
    DECODE_SECONDS,
    FORWARD_SECONDS,
    JOB_LATENCY,
    JOBS_FINISHED,
)
from workers.model_cache import ModelCache

logger = logging.getLogger(__name__)

model_cache = ModelCache(settings)
job_store = JobStore(redis.Redis.from_url(settings.redis_url), settings.job_ttl_s)
_limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
_decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")


@app.task(
    name=PREDICT_IMAGE_TASK,
    base=DynamicBatches,
    flush_every=settings.max_batch_size,
    flush_interval=settings.max_batch_delay_ms / 1000.0,
    acks_late=True,
)
def predict_images(requests: Sequence[SimpleRequest]) -> bool:
    """Run one batch of image messages; True once every result or failure is stored."""
    refs = [(str(r.args[0]), int(r.args[1])) for r in requests]
    targets = job_store.predict_targets(sorted({job_id for job_id, _ in refs}))
    live = [(job_id, index) for job_id, index in refs if targets[job_id] is not None]
    if not live:
        return True  # every job ended or expired: nothing to do, ack
    job_store.mark_running(sorted({job_id for job_id, _ in live}))
    targets = _pin_versions(targets)
    by_model: dict[tuple[str, int], list[tuple[PredictTarget, int, bytes | None]]] = defaultdict(
        list
    )
    for (job_id, index), image in zip(live, job_store.load_images(live), strict=True):
        target = targets[job_id]
        if target is not None and target.version is not None:
            by_model[(target.model, target.version)].append((target, index, image))
    for (model, version), items in by_model.items():
        _run_model(model, version, items)
    return True


def _pin_versions(
    targets: dict[str, PredictTarget | None],
) -> dict[str, PredictTarget | None]:
    """Give every unpinned job the version this worker serves now (first image decides)."""
    wanted: dict[str, int] = {}
    for job_id, target in targets.items():
        if target is not None and target.version is None:
            try:
                wanted[job_id] = model_cache.serving_version(target.model)
            except ImgqError as exc:  # the model vanished from the registry
                job_store.fail(job_id, exc.to_dict())
                targets[job_id] = None
    pinned = job_store.pin_versions(wanted) if wanted else {}
    return {
        job_id: (replace(target, version=pinned[job_id]) if job_id in pinned and target else target)
        for job_id, target in targets.items()
    }


def _decode(image: bytes | None, size: tuple[int, int]) -> np.ndarray | ImgqError:
    if image is None:
        return ImgqError("The image payload expired before it was processed.")
    try:
        return decode_image(image, size, _limits)
    except ImgqError as exc:
        return exc


def _run_model(
    model: str, version: int, items: list[tuple[PredictTarget, int, bytes | None]]
) -> None:
    """Decode, predict and store one model's share of a batch."""
    try:
        classifier = model_cache.get(model, version)
    except ImgqError as exc:  # e.g. missing weights: fail these jobs, retrying cannot help
        logger.error("model unavailable", extra={"model": model, "code": exc.code})
        for target in {target for target, _, _ in items}:
            if job_store.fail(target.job_id, exc.to_dict()):
                JOBS_FINISHED.labels("predict", "failed", exc.code).inc()
        return
    with DECODE_SECONDS.time():
        decoded = list(_decoders.map(lambda item: _decode(item[2], classifier.image_size), items))
    good = [
        (item, pixels)
        for item, pixels in zip(items, decoded, strict=True)
        if isinstance(pixels, np.ndarray)
    ]
    for (target, index, _), error in zip(items, decoded, strict=True):
        if isinstance(error, ImgqError):
            detail = {**error.to_dict(), "details": {"image": index}}
            if job_store.fail(target.job_id, detail):
                JOBS_FINISHED.labels("predict", "failed", error.code).inc()
            logger.info("image rejected", extra={"job_id": target.job_id, "code": error.code})
    if not good:
        return
    BATCH_SIZE.labels(model).observe(len(good))
    with FORWARD_SECONDS.labels(model).time():
        probabilities = classifier.predict_proba(np.stack([pixels for _, pixels in good]))
    results = []
    for ((target, index, _), _pixels), row in zip(good, probabilities, strict=True):
        top = classifier.top_k(row[None, :], target.top_k)[0]
        results.append((target.job_id, index, [asdict(p) for p in top]))
    latencies = job_store.store_predictions(results)
    for latency in latencies:
        JOBS_FINISHED.labels("predict", "succeeded", "").inc()
        JOB_LATENCY.labels("predict").observe(latency)
    logger.debug(
        "batch done",
        extra={
            "model": model,
            "version": version,
            "batch_size": len(good),
            "jobs_completed": len(latencies),
        },
    )
