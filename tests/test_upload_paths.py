"""A job record that names a file outside the uploads directory cannot make a training worker
read or delete it: whoever can write to Redis is not thereby trusted with the disk."""

from __future__ import annotations

from pathlib import Path

from imgq.jobs.status import JobStatus, JobType
from imgq.jobs.store import new_job_id
from imgq.settings import Settings
from workers.context import WorkerContext
from workers.ingest import run_ingest_job


def test_an_upload_outside_the_uploads_directory_fails_the_job_and_is_left_alone(
    settings: Settings, tmp_path: Path
) -> None:
    precious = tmp_path / "precious.zip"
    precious.write_bytes(b"not yours")
    context = WorkerContext.build(settings, serves_models=False)
    job_id = new_job_id()
    params = {"dataset": "@alice/x", "data_mode": "replace", "seed": 0, "archive": str(precious)}
    context.jobs.create_job(job_id, JobType.INGEST, params, client="alice")
    run_ingest_job(context, job_id)
    job = context.jobs.get(job_id)
    assert job is not None and job["status"] is JobStatus.FAILED
    assert job["error"]["code"] == "internal_error"
    assert precious.read_bytes() == b"not yours"
