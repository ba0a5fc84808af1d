"""The ingest task: an uploaded archive stored as a dataset's next version, without training.

Runs on training workers like the other long jobs (acknowledged at start, watched by the
reaper through its heartbeat), but needs no TensorFlow: it unpacks, checks and hashes images
and writes a manifest (``ml.dataset_ingest``). A fine-tune with an upload does the same as its
first step, through ``ingest_request``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Task

from imgq.errors import InternalError
from imgq.jobs.status import JobType
from imgq.queueing import INGEST_TASK
from ml.archive import ArchiveLimits
from ml.dataset_ingest import DataMode, DatasetLimits, IngestRequest, ingest_archive
from ml.dataset_store import DatasetStore
from ml.registry import split_model_id
from workers.context import WorkerApp, WorkerContext, context_of
from workers.long_jobs import LongJob, claim_long_job, run_watched
from workers.outcomes import fail_job, succeed_job


def ingest_request(context: WorkerContext, job: LongJob, archive: Path) -> IngestRequest:
    """What storing a job's upload needs: its dataset, mode and seed, and the limits."""
    settings = context.settings
    return IngestRequest(
        dataset=job.params["dataset"],
        archive=archive,
        mode=DataMode(job.params.get("data_mode", DataMode.REPLACE)),
        seed=int(job.params.get("seed", 0)),
        by=job.client,
        details={"job_id": job.job_id},
        min_images_per_class=settings.min_images_per_class,
        archive_limits=ArchiveLimits(
            settings.max_dataset_entries,
            settings.max_dataset_unpacked_bytes,
            settings.max_dataset_ratio,
        ),
        image_limits=context.image_limits,
        dataset_limits=DatasetLimits(settings.max_dataset_images, settings.max_dataset_store_bytes),
    )


def upload_path(context: WorkerContext, job: LongJob) -> Path | None:
    """The upload a job names, or None (with the job failed) when it is not a file of the
    uploads directory: whoever can write a job record must not make a worker read, or delete,
    any other file."""
    raw = job.params.get("archive")
    if not raw:
        return None
    path, root = Path(raw).resolve(), context.settings.upload_dir.resolve()
    if path.parent != root:
        fail_job(
            context.jobs,
            job.job_type,
            job.job_id,
            InternalError("The job names an upload outside the uploads directory."),
        )
        raise UploadRefused(str(path))
    return path


class UploadRefused(Exception):
    """A job named an upload outside the uploads directory (the job has been failed)."""


def dataset_store(context: WorkerContext) -> DatasetStore:
    """The datasets on this worker's model store."""
    return DatasetStore(context.settings.model_store)


def run_ingest_job(context: WorkerContext, job_id: str) -> None:
    """Store one ingest job's upload as a dataset version, and end the job."""
    job = claim_long_job(context, JobType.INGEST, job_id)
    if job is None:
        return
    try:
        archive = upload_path(context, job)
    except UploadRefused:
        return
    if archive is None:
        fail_job(context.jobs, JobType.INGEST, job_id, InternalError("The job has no upload."))
        return
    try:
        request = ingest_request(context, job, archive)
        context.settings.upload_dir.mkdir(parents=True, exist_ok=True)
        ok, result = run_watched(
            job,
            lambda: ingest_archive(dataset_store(context), request, context.settings.upload_dir),
            InternalError("The ingest job failed unexpectedly; the dataset is unchanged."),
        )
        if ok and result is not None:
            owner, _ = split_model_id(request.dataset)
            succeed_job(context.jobs, JobType.INGEST, job_id, {**result, "owner": owner})
    finally:
        archive.unlink(missing_ok=True)


def register_tasks(app: WorkerApp) -> None:
    """Register ``imgq.train.ingest`` on a training worker's app."""

    @app.task(
        shared=False,  # this app's task only, not every app's in the process
        name=INGEST_TASK,
        bind=True,
        acks_late=False,
        soft_time_limit=app.context.settings.train_time_limit_s,
    )
    def ingest(task: Task[Any, None], job_id: str) -> None:
        """One ingest job."""
        run_ingest_job(context_of(task.app), job_id)
