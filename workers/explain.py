"""Explained predictions: top-k labels plus a Grad-CAM heatmap per image.

Grad-CAM needs a gradient pass per image, several times the cost of a batched forward pass, so
explained jobs run as one task of their own instead of joining the micro-batches, and the fast
path keeps its latency. The heatmaps (PNG overlays) are stored with the job and expire with it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
from celery import Task

from imgq.errors import ImgqError
from imgq.jobs.documents import PredictResult
from imgq.jobs.status import JobType
from imgq.queueing import EXPLAIN_TASK
from ml.preprocess import decode_image
from ml.registry import split_model_id
from workers.context import WorkerApp, WorkerContext, context_of
from workers.outcomes import fail_job, succeed_job

logger = logging.getLogger(__name__)


def explain_job(context: WorkerContext, job_id: str) -> None:
    """Predict and explain every image of one job, then store the result."""
    jobs, images = context.jobs, context.images
    target = images.targets([job_id])[job_id]
    if target is None:
        return  # ended (canceled) or expired
    jobs.mark_running([job_id])
    try:
        version = target.version
        if version is None:
            wanted = context.models.serving_version(target.model)
            version = images.pin_versions({job_id: wanted})[job_id]
        classifier = context.models.get(target.model, version)
        count = images.image_count(job_id)
        encoded = images.load([(job_id, i) for i in range(count)])
        limits = context.image_limits
        pixels = [decode_image(b or b"", classifier.image_size, limits) for b in encoded]
    except ImgqError as exc:
        fail_job(jobs, JobType.PREDICT, job_id, exc)
        return
    from ml.gradcam import gradcam, overlay_png  # TensorFlow is already loaded in this worker

    tops = classifier.top_k(classifier.predict_proba(np.stack(pixels)), target.top_k)
    explanations, artifacts = [], []
    for index, (image, top) in enumerate(zip(pixels, tops, strict=True)):
        heatmap, explained = gradcam(classifier.model, image, top[0].index)
        name = f"gradcam-{index}.png"
        jobs.store_artifact(job_id, name, overlay_png(image, heatmap))
        explanations.append(
            {
                "image": index,
                "index": explained,
                "label": classifier.labels[explained],
                "artifact": name,
            }
        )
        artifacts.append(name)
    result = PredictResult(
        split_model_id(target.model)[1],
        version,
        [[asdict(p) for p in top] for top in tops],
        explanations=explanations,
        artifacts=artifacts,
    )
    succeed_job(jobs, JobType.PREDICT, job_id, result.to_dict())
    logger.info("explained", extra={"job_id": job_id, "images": count})


def register_tasks(app: WorkerApp) -> None:
    """Register ``imgq.explain`` on a prediction worker's app."""

    @app.task(name=EXPLAIN_TASK, acks_late=True, bind=True, shared=False)
    def explain(task: Task[Any, None], job_id: str) -> None:
        """One explained predict job, outside the micro-batches."""
        explain_job(context_of(task.app), job_id)
