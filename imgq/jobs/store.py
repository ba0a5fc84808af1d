"""Job records in Redis and their transitions: one hash per job, with a TTL.

The job record *is* the result: clients poll it through the API, workers write it, and Celery's
own result backend is not used. A record is created ``queued``; ``mark_running`` starts it;
``succeed``, ``fail`` and ``mark_canceled`` end it (and ``cancel`` does for a queued job). Each
transition that races between processes is a Lua script (``imgq.jobs.scripts``), so a job
reaches a terminal state exactly once and never holds two different results. Per-image work of
predict jobs is in ``imgq.jobs.predict_images``; the registries watching running jobs in
``imgq.jobs.registries``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from imgq import redis_keys
from imgq.errors import ImgqError
from imgq.jobs import scripts
from imgq.jobs.documents import job_document
from imgq.jobs.index import add_to_indexes, page_of_ids, remove_from_indexes
from imgq.jobs.predict_images import job_keys
from imgq.jobs.registries import PredictChecks
from imgq.jobs.status import CancelOutcome, JobStatus, JobType


def new_job_id() -> str:
    """Return a fresh, unguessable job id."""
    return uuid.uuid4().hex


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobStore:
    """Reads and writes job records; shared by the API (create, read) and workers (transitions)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._finish = client.register_script(scripts.FINISH)
        self._mark_running = client.register_script(scripts.MARK_RUNNING)
        self._cancel = client.register_script(scripts.CANCEL)
        self._set_progress = client.register_script(scripts.SET_PROGRESS)

    # --- records ---------------------------------------------------------------------------

    def _new_record(
        self, job_id: str, job_type: JobType, client: str, callback_url: str | None
    ) -> dict[FieldT, EncodableT]:
        record: dict[FieldT, EncodableT] = {
            "id": job_id,
            "type": job_type.value,
            "status": JobStatus.QUEUED.value,
            "created_at": repr(time.time()),
            "client": client,
        }
        if callback_url is not None:
            record["callback_url"] = callback_url
        return record

    def _store_record(
        self, pipe: redis.client.Pipeline, job_id: str, record: dict[FieldT, EncodableT]
    ) -> None:
        pipe.hset(redis_keys.job_record(job_id), mapping=record)
        pipe.expire(redis_keys.job_record(job_id), self._ttl_s)
        created_at = float(str(record["created_at"]))
        add_to_indexes(pipe, job_id, str(record["client"]), created_at, self._ttl_s)

    def create_predict_job(
        self,
        job_id: str,
        images: Sequence[bytes],
        model: str,
        version: int | None,
        top_k: int,
        *,
        client: str,
        deadline_s: float,
        check_after_s: float,
        callback_url: str | None = None,
        explain: bool = False,
        retained: Sequence[str] | None = None,
        queue_commands: Sequence[tuple[str, tuple[Any, ...]]] | None = None,
    ) -> None:
        """Store a queued predict job with its images in one transaction.

        ``queue_commands`` are the Redis commands that queue the job's message (from
        ``imgq.queueing.predict_message_commands``), run in the same transaction when the
        broker is this Redis: the job and its message appear together or not at all.

        ``retained`` are the hashes under which the images are also kept on the model store
        for feedback (``api.feedback``).

        ``version`` None leaves the choice to the worker, which pins the version it serves
        when it takes the job's first image, so all of a job's images use one version. The
        reaper first looks at the job ``check_after_s`` from now if it is still open, and fails
        it once it is ``deadline_s`` old (see ``workers.reaper``).
        """
        record = self._new_record(job_id, JobType.PREDICT, client, callback_url)
        record.update({"model": model, "top_k": str(top_k), "image_count": str(len(images))})
        if version is not None:
            record["version"] = str(version)
        if explain:
            record["explain"] = "1"
        if retained is not None:
            record["retained"] = json.dumps(list(retained))
        record["deadline_s"] = repr(float(deadline_s))
        pipe = self._redis.pipeline(transaction=True)
        self._store_record(pipe, job_id, record)
        pipe.hset(redis_keys.job_images(job_id), mapping={str(i): b for i, b in enumerate(images)})
        pipe.expire(redis_keys.job_images(job_id), self._ttl_s)
        PredictChecks.schedule(pipe, job_id, float(str(record["created_at"])) + check_after_s)
        for name, args in queue_commands or ():
            getattr(pipe, name)(*args)
        pipe.execute()

    def create_job(
        self,
        job_id: str,
        job_type: JobType,
        params: dict[str, Any],
        *,
        client: str,
        callback_url: str | None = None,
    ) -> None:
        """Store a queued fine-tune or export job; ``params`` are its validated parameters."""
        record = self._new_record(job_id, job_type, client, callback_url)
        record["params"] = json.dumps(params)
        pipe = self._redis.pipeline(transaction=True)
        self._store_record(pipe, job_id, record)
        pipe.execute()

    def delete(self, job_id: str) -> None:
        """Remove a job entirely (used when its tasks could not be enqueued)."""
        client = self._redis.hget(redis_keys.job_record(job_id), "client")
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(*job_keys(job_id))
        remove_from_indexes(pipe, job_id, None if client is None else _text(client))
        pipe.execute()

    def list_jobs(
        self,
        client: str | None,
        *,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of jobs, newest first: a client's own (or everybody's, for None)."""
        key = redis_keys.ALL_JOBS if client is None else redis_keys.client_jobs(client)
        documents: dict[str, dict[str, Any]] = {}

        def keep(job_ids: list[str]) -> list[str]:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(redis_keys.job_record(job_id))
            kept = []
            for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
                if not raw:
                    self._redis.zrem(key, job_id)  # the record expired
                    continue
                document = job_document({_text(k): _text(v) for k, v in raw.items()})
                if (status is None or document["status"] == status) and (
                    job_type is None or document["type"] == job_type
                ):
                    documents[job_id] = document
                    kept.append(job_id)
            return kept

        page = page_of_ids(self._redis, key, limit, cursor, keep)
        return [documents[job_id] for job_id in page.job_ids], page.next_cursor

    def get(self, job_id: str) -> dict[str, Any] | None:
        """Return the public job document, or None when there is no such job."""
        fields = self.fields(job_id)
        return job_document(fields) if fields else None

    def fields_and_delivery(self, job_id: str) -> tuple[dict[str, str], str | None]:
        """The raw record and its webhook delivery's stored JSON (None without one), in one
        round trip: all ``GET /jobs/<id>`` needs."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(redis_keys.job_record(job_id))
        pipe.get(redis_keys.webhook_delivery(job_id))
        raw, delivery = pipe.execute()
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return fields, None if delivery is None else _text(delivery)

    def fields(self, job_id: str) -> dict[str, str]:
        """The raw stored record (empty when there is no such job)."""
        raw = self._redis.hgetall(redis_keys.job_record(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def store_artifact(self, job_id: str, name: str, content: bytes) -> None:
        """Keep a file a job produced (a heatmap) for as long as the job."""
        self._redis.set(redis_keys.job_artifact(job_id, name), content, ex=self._ttl_s)

    def artifact(self, job_id: str, name: str) -> bytes | None:
        """A file stored with ``store_artifact``, or None."""
        content = self._redis.get(redis_keys.job_artifact(job_id, name))
        if content is None:
            return None
        return content.encode() if isinstance(content, str) else bytes(content)

    # --- transitions -----------------------------------------------------------------------

    def mark_running(self, job_ids: Sequence[str]) -> list[bool]:
        """Move queued jobs to running, stamping ``started_at``; True where this call did."""
        now = repr(time.time())
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._mark_running(keys=[redis_keys.job_record(job_id)], args=[now], client=pipe)
        return [bool(outcome) for outcome in pipe.execute()]

    def _end(self, job_id: str, status: JobStatus, field: str, payload: str) -> bool:
        outcome = self._finish(
            keys=job_keys(job_id),
            args=[
                status.value,
                field,
                payload,
                repr(time.time()),
                job_id,
                redis_keys.JOBS_DONE_CHANNEL,
            ],
        )
        return bool(outcome)

    def fail(self, job_id: str, error: ImgqError) -> bool:
        """Mark a job failed with ``error``'s envelope; False if it had already ended."""
        return self._end(job_id, JobStatus.FAILED, "error", json.dumps(error.to_dict()))

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        """Mark a job succeeded with its result; False if it had already ended."""
        return self._end(job_id, JobStatus.SUCCEEDED, "result", json.dumps(result))

    def mark_canceled(self, job_id: str) -> bool:
        """A worker stopped a job on request; False if it had already ended."""
        return self._end(job_id, JobStatus.CANCELED, "", "")

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a queued job or ask a running fine-tune to stop."""
        outcome = self._cancel(
            keys=job_keys(job_id),
            args=[repr(time.time()), job_id, redis_keys.JOBS_DONE_CHANNEL],
        )
        return CancelOutcome(_text(outcome))

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> bool:
        """Publish a running job's progress; returns True when a cancel was requested."""
        return bool(
            self._set_progress(keys=[redis_keys.job_record(job_id)], args=[json.dumps(progress)])
        )

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked this running job to stop."""
        return bool(self._redis.hexists(redis_keys.job_record(job_id), "cancel_requested"))
