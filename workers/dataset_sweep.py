"""The dataset sweep: image files that no dataset version holds any more leave the store.

Deleting an image or a dataset version never removes bytes at once, because a training job
may be reading the version it resolved a moment ago (``ml.dataset_store``). Webhooks workers
sweep instead, in a thread of their own so a long sweep never delays a webhook: every
``IMGQ_DATASET_SWEEP_INTERVAL_S`` one of them (the one that takes a lease in Redis) removes
the files unreferenced for longer than ``IMGQ_DATASET_SWEEP_GRACE_S``.
"""

from __future__ import annotations

import logging

from imgq.redis_keys import DATASET_SWEEP_LEASE
from ml.dataset_store import DatasetStore
from workers.context import WorkerContext

logger = logging.getLogger(__name__)


def sweep_datasets(context: WorkerContext) -> dict[str, int] | None:
    """Sweep every dataset if no other worker did this interval; removed files per dataset,
    or None when another worker holds the lease."""
    settings = context.settings
    if not context.redis.set(
        DATASET_SWEEP_LEASE, "1", nx=True, ex=max(1, settings.dataset_sweep_interval_s - 1)
    ):
        return None
    removed = DatasetStore(settings.model_store).sweep_all(settings.dataset_sweep_grace_s)
    if any(removed.values()):
        logger.info("dataset sweep removed %d images", sum(removed.values()))
    return removed
