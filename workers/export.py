"""The export task: a trained version in, a checked SavedModel or TFLite file out.

Each export is run by its own runtime over the version's test split (see ``ml.export``), and
the report (size, agreement with the Keras model, accuracy, ``within_margin``) is both the
job's result and stored beside the file in the registry. Like fine-tunes, exports run on
training workers, are acknowledged when they start and beat a heartbeat.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from celery import Task

from imgq.errors import ExportFailed, ExportNotSupported
from imgq.jobs.status import JobType
from imgq.queueing import EXPORT_TASK
from ml.registry import split_model_id
from workers.context import WorkerApp, WorkerContext, context_of
from workers.long_jobs import claim_long_job, run_watched
from workers.outcomes import succeed_job

logger = logging.getLogger(__name__)


def run_export_job(context: WorkerContext, job_id: str) -> None:
    """Produce one export of a model version, check it, and end the job."""
    job = claim_long_job(context, JobType.EXPORT, job_id)
    if job is None:
        return
    model, version = job.params["model"], int(job.params["version"])
    ok, report = run_watched(
        job, lambda: _export(context, model, version, job.params["format"]), ExportFailed()
    )
    if ok and report is not None:
        owner, name = split_model_id(model)
        result = {"model": name, "owner": owner, "version": version, **report}
        succeed_job(context.jobs, JobType.EXPORT, job_id, result)


def _export(context: WorkerContext, model: str, version: int, fmt: str) -> dict[str, Any]:
    import keras

    import ml.layers  # noqa: F401  (registers the custom layers saved models may hold)
    from ml.export import export_version
    from ml.registry import ModelRegistry

    settings = context.settings
    registry = ModelRegistry(settings.model_store, settings.model_cache_dir)
    meta = registry.get(model, version)
    if meta.kind != "trained":
        raise ExportNotSupported(f"{model} v{version} is built in; only trained versions export.")
    folder = registry.local_version_dir(model, version)
    keras_model = keras.saving.load_model(folder / "model.keras", compile=False, safe_mode=True)
    with tempfile.TemporaryDirectory() as scratch:
        report = export_version(
            keras_model,
            list(meta.labels),
            fmt,
            folder,
            Path(scratch),
            margin=settings.export_accuracy_margin,
        ).to_dict()
        registry.save_export(model, version, Path(scratch) / report["file_name"], report)
    return report


def register_tasks(app: WorkerApp) -> None:
    """Register ``imgq.train.export`` on a training worker's app."""

    @app.task(
        shared=False,  # this app's task only, not every app's in the process
        name=EXPORT_TASK,
        bind=True,
        acks_late=False,
        soft_time_limit=app.context.settings.train_time_limit_s,
    )
    def export(task: Task[Any, None], job_id: str) -> None:
        """One export job."""
        run_export_job(context_of(task.app), job_id)
