"""Explained predictions: top-k labels plus a Grad-CAM heatmap per image.

Grad-CAM needs a gradient pass per image, several times the cost of a batched forward pass, so
explained jobs run as one task of their own instead of joining the micro-batches, and the fast
path keeps its latency. The heatmaps (PNG overlays) are stored with the job and expire with it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np

from imgq.errors import ImgqError
from imgq.queueing import EXPLAIN_TASK
from ml.preprocess import ImageLimits, decode_image
from workers.celery_app import app, settings
from workers.metrics import JOBS_FINISHED
from workers.predict import job_store, model_cache

logger = logging.getLogger(__name__)

_limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)


@app.task(name=EXPLAIN_TASK, acks_late=True)
def explain_job(job_id: str) -> None:
    """Predict and explain every image of one job, then store the result."""
    target = job_store.predict_targets([job_id])[job_id]
    if target is None:
        return  # ended (canceled) or expired
    job_store.mark_running([job_id])
    try:
        version = target.version
        if version is None:
            wanted = model_cache.serving_version(target.model)
            version = job_store.pin_versions({job_id: wanted})[job_id]
        classifier = model_cache.get(target.model, version)
        count = int(job_store.fields(job_id)["image_count"])
        encoded = job_store.load_images([(job_id, i) for i in range(count)])
        pixels = [decode_image(b or b"", classifier.image_size, _limits) for b in encoded]
    except ImgqError as exc:
        if job_store.fail(job_id, exc.to_dict()):
            JOBS_FINISHED.labels("predict", "failed", exc.code).inc()
        return
    from ml.gradcam import gradcam, overlay_png  # TensorFlow is already loaded in this worker

    tops = classifier.top_k(classifier.predict_proba(np.stack(pixels)), target.top_k)
    explanations, artifacts = [], []
    for index, (image, top) in enumerate(zip(pixels, tops, strict=True)):
        heatmap, explained = gradcam(classifier.model, image, top[0].index)
        name = f"gradcam-{index}.png"
        job_store.store_artifact(job_id, name, overlay_png(image, heatmap))
        explanations.append(
            {
                "image": index,
                "index": explained,
                "label": classifier.labels[explained],
                "artifact": name,
            }
        )
        artifacts.append(name)
    result = {
        "model": target.model,
        "version": version,
        "predictions": [[asdict(p) for p in top] for top in tops],
        "explanations": explanations,
        "artifacts": artifacts,
    }
    if job_store.succeed(job_id, result):
        JOBS_FINISHED.labels("predict", "succeeded", "").inc()
    logger.info("explained", extra={"job_id": job_id, "images": count})
