"""Job records in Redis: one hash per job plus the payload and per-image results, all with a TTL.

The job record *is* the result: clients poll it through the API, workers write it, and Celery's
own result backend is not used. State changes that race between workers (the last image of a job
finishing, a job failing while other images still run) happen in Lua scripts, so a job reaches a
terminal state exactly once and never holds two different results.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from imgq import job_scripts
from imgq.job_index import ALL_JOBS, add_to_indexes, client_index, page_of_ids
from imgq.job_scripts import HEARTBEATS, PREDICT_CHECKS, RESENT_IMAGES

KEY_PREFIX = "imgq:job:"
"""Prefix of every job key; ``imgq:job:<id>`` is the record hash."""
DONE_CHANNEL = "imgq:jobs:done"
"""Pub/sub channel that carries the id of every job reaching a terminal state."""


class JobStatus(StrEnum):
    """Every state a job can be in; ``succeeded``, ``failed`` and ``canceled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """Whether no further transition can happen."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class JobType(StrEnum):
    """What a job does."""

    PREDICT = "predict"
    FINETUNE = "finetune"
    EXPORT = "export"


def record_key(job_id: str) -> str:
    """Key of the job's record hash."""
    return f"{KEY_PREFIX}{job_id}"


def images_key(job_id: str) -> str:
    """Key of the hash ``index -> encoded image bytes`` of a predict job."""
    return f"{KEY_PREFIX}{job_id}:images"


def predictions_key(job_id: str) -> str:
    """Key of the hash ``index -> JSON predictions`` that fills as images finish."""
    return f"{KEY_PREFIX}{job_id}:predictions"


@dataclass(frozen=True)
class PredictTarget:
    """What a worker needs to run one image of a predict job."""

    job_id: str
    model: str
    version: int | None  # None: whichever version the worker serves when it starts the job
    top_k: int


def new_job_id() -> str:
    """Return a fresh, unguessable job id."""
    return uuid.uuid4().hex


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _now() -> float:
    return time.time()


class JobStore:
    """Reads and writes job records; shared by the API (create, read) and workers (transitions)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._store_prediction = client.register_script(job_scripts.STORE_PREDICTION)
        self._finish = client.register_script(job_scripts.FINISH)
        self._mark_running = client.register_script(job_scripts.MARK_RUNNING)
        self._cancel = client.register_script(job_scripts.CANCEL)
        self._set_progress = client.register_script(job_scripts.SET_PROGRESS)

    def _new_record(self, job_id: str, job_type: JobType, client: str) -> dict[FieldT, EncodableT]:
        return {
            "id": job_id,
            "type": job_type.value,
            "status": JobStatus.QUEUED.value,
            "created_at": repr(_now()),
            "client": client,
        }

    def _store_record(
        self, pipe: redis.client.Pipeline, job_id: str, record: dict[FieldT, EncodableT]
    ) -> None:
        pipe.hset(record_key(job_id), mapping=record)
        pipe.expire(record_key(job_id), self._ttl_s)
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
    ) -> None:
        """Store a queued predict job with its images in one transaction.

        ``version`` None leaves the choice to the worker, which pins the version it serves
        when it takes the job's first image, so all of a job's images use one version. The
        reaper first looks at the job ``check_after_s`` from now if it is still open, and fails
        it once it is ``deadline_s`` old (see ``workers.reaper``).
        """
        record = self._new_record(job_id, JobType.PREDICT, client)
        record.update({"model": model, "top_k": str(top_k), "image_count": str(len(images))})
        if version is not None:
            record["version"] = str(version)
        if callback_url is not None:
            record["callback_url"] = callback_url
        if explain:
            record["explain"] = "1"
        record["deadline_s"] = repr(float(deadline_s))
        pipe = self._redis.pipeline(transaction=True)
        self._store_record(pipe, job_id, record)
        pipe.hset(images_key(job_id), mapping={str(i): b for i, b in enumerate(images)})
        pipe.expire(images_key(job_id), self._ttl_s)
        pipe.zadd(PREDICT_CHECKS, {job_id: float(str(record["created_at"])) + check_after_s})
        pipe.execute()

    def create_export_job(self, job_id: str, params: dict[str, Any], *, client: str) -> None:
        """Store a queued export job (model, version, format)."""
        record = self._new_record(job_id, JobType.EXPORT, client)
        record["params"] = json.dumps(params)
        pipe = self._redis.pipeline(transaction=True)
        self._store_record(pipe, job_id, record)
        pipe.execute()

    def create_finetune_job(
        self, job_id: str, params: dict[str, Any], *, client: str, callback_url: str | None = None
    ) -> None:
        """Store a queued fine-tune job; ``params`` are its validated training parameters."""
        record = self._new_record(job_id, JobType.FINETUNE, client)
        if callback_url is not None:
            record["callback_url"] = callback_url
        record["params"] = json.dumps(params)
        pipe = self._redis.pipeline(transaction=True)
        self._store_record(pipe, job_id, record)
        pipe.execute()

    def delete(self, job_id: str) -> None:
        """Remove a job entirely (used when its tasks could not be enqueued)."""
        client = self._redis.hget(record_key(job_id), "client")
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(record_key(job_id), images_key(job_id), predictions_key(job_id))
        pipe.zrem(ALL_JOBS, job_id)
        if client is not None:
            pipe.zrem(client_index(_text(client)), job_id)
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
        key = ALL_JOBS if client is None else client_index(client)
        documents: dict[str, dict[str, Any]] = {}

        def keep(job_ids: list[str]) -> list[str]:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(record_key(job_id))
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

    def fields(self, job_id: str) -> dict[str, str]:
        """The raw stored record (empty when there is no such job)."""
        raw = self._redis.hgetall(record_key(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def predict_targets(self, job_ids: Sequence[str]) -> dict[str, PredictTarget | None]:
        """Fetch what workers need for each job; None for jobs gone or already terminal."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(record_key(job_id), ["status", "model", "version", "top_k"])
        targets: dict[str, PredictTarget | None] = {}
        for job_id, (status, model, version, top_k) in zip(job_ids, pipe.execute(), strict=True):
            if status is None or JobStatus(_text(status)).is_terminal:
                targets[job_id] = None
            else:
                pinned = None if version is None else int(version)
                targets[job_id] = PredictTarget(job_id, _text(model), pinned, int(top_k))
        return targets

    def pin_versions(self, versions: dict[str, int]) -> dict[str, int]:
        """Pin each job to a version unless one is pinned already; returns the pinned versions."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, version in versions.items():
            pipe.hsetnx(record_key(job_id), "version", str(version))
            pipe.hget(record_key(job_id), "version")
        replies = pipe.execute()
        return {job_id: int(replies[2 * i + 1]) for i, job_id in enumerate(versions)}

    def load_images(self, refs: Sequence[tuple[str, int]]) -> list[bytes | None]:
        """Fetch encoded images by ``(job_id, index)`` in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, index in refs:
            pipe.hget(images_key(job_id), str(index))
        return list(pipe.execute())

    def mark_running(self, job_ids: Sequence[str]) -> list[bool]:
        """Move queued jobs to running, stamping ``started_at``; True where this call did."""
        now = repr(_now())
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._mark_running(keys=[record_key(job_id)], args=[now], client=pipe)
        return [bool(outcome) for outcome in pipe.execute()]

    def store_predictions(
        self, results: Sequence[tuple[str, int, list[dict[str, Any]]]]
    ) -> list[float]:
        """Store per-image predictions; returns the latency (s) of each job this call completed."""
        now = _now()
        pipe = self._redis.pipeline(transaction=False)
        for job_id, index, predictions in results:
            self._store_prediction(
                keys=self._job_keys(job_id),
                args=[index, json.dumps(predictions), repr(now), self._ttl_s, job_id, DONE_CHANNEL],
                client=pipe,
            )
        # A completed job's script returns its created_at as a string; others return 0 or 1.
        return [now - float(outcome) for outcome in pipe.execute() if isinstance(outcome, bytes)]

    def _job_keys(self, job_id: str) -> list[str]:
        return [record_key(job_id), predictions_key(job_id), images_key(job_id)]

    def _end(self, job_id: str, status: JobStatus, field: str, payload: str) -> bool:
        outcome = self._finish(
            keys=self._job_keys(job_id),
            args=[status.value, field, payload, repr(_now()), job_id, DONE_CHANNEL],
        )
        return bool(outcome)

    def fail(self, job_id: str, error: dict[str, Any]) -> bool:
        """Mark a job failed with an error envelope; False if it had already ended."""
        return self._end(job_id, JobStatus.FAILED, "error", json.dumps(error))

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        """Mark a job succeeded with its result; False if it had already ended."""
        return self._end(job_id, JobStatus.SUCCEEDED, "result", json.dumps(result))

    def mark_canceled(self, job_id: str) -> bool:
        """A worker stopped a job on request; False if it had already ended."""
        return self._end(job_id, JobStatus.CANCELED, "", "")

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job or ask a running fine-tune to stop.

        Returns one of ``canceled``, ``cancel_requested``, ``ended``, ``not_cancelable``,
        ``missing``.
        """
        outcome = self._cancel(
            keys=self._job_keys(job_id), args=[repr(_now()), job_id, DONE_CHANNEL]
        )
        return _text(outcome)

    def store_artifact(self, job_id: str, name: str, content: bytes) -> None:
        """Keep a file a job produced (a heatmap) for as long as the job."""
        self._redis.set(f"{record_key(job_id)}:artifact:{name}", content, ex=self._ttl_s)

    def artifact(self, job_id: str, name: str) -> bytes | None:
        """A file stored with ``store_artifact``, or None."""
        content = self._redis.get(f"{record_key(job_id)}:artifact:{name}")
        if content is None:
            return None
        return content.encode() if isinstance(content, str) else bytes(content)

    def watch(self, job_id: str) -> None:
        """Start expecting heartbeats from a long job that has just started running."""
        self._redis.zadd(HEARTBEATS, {job_id: _now()})

    def beat(self, job_id: str) -> bool:
        """A long job is alive; returns True when someone asked it to stop."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(HEARTBEATS, {job_id: _now()}, xx=True)
        pipe.hexists(record_key(job_id), "cancel_requested")
        return bool(pipe.execute()[1])

    def reap(self, silent_for_s: float) -> list[str]:
        """Fail long jobs whose worker stopped beating (it died); returns their ids."""
        members = self._redis.zrangebyscore(HEARTBEATS, "-inf", _now() - silent_for_s)
        stale = [_text(job) for job in cast("list[bytes]", members)]
        reaped = []
        for job_id in stale:
            error = {
                "code": "worker_lost",
                "message": (
                    f"The worker running this job stopped responding for {silent_for_s:.0f} s "
                    "(it crashed or was killed). Nothing was published; submit the job again."
                ),
            }
            if self.fail(job_id, error):
                reaped.append(job_id)
            self._redis.zrem(HEARTBEATS, job_id)  # gone or already ended
        return reaped

    def claim_due_checks(self, limit: int = 100) -> list[str]:
        """Take open predict jobs due for a reaper check; each goes to exactly one caller."""
        members = cast(
            "list[bytes]",
            self._redis.zrangebyscore(PREDICT_CHECKS, "-inf", _now(), start=0, num=limit),
        )
        pipe = self._redis.pipeline(transaction=False)
        for member in members:
            pipe.zrem(PREDICT_CHECKS, member)
        claimed = pipe.execute()
        return [_text(m) for m, won in zip(members, claimed, strict=True) if won]

    def check_again(self, job_id: str, after_s: float, *, requeued: int = 0) -> None:
        """Have the reaper look at an open job again ``after_s`` from now.

        ``requeued`` counts images just sent again, kept on the record as ``requeues``.
        """
        pipe = self._redis.pipeline(transaction=True)
        if requeued:
            pipe.hincrby(record_key(job_id), "requeues", requeued)
            pipe.incrby(RESENT_IMAGES, requeued)
        pipe.zadd(PREDICT_CHECKS, {job_id: _now() + after_s})
        pipe.execute()

    def missing_images(self, job_id: str) -> list[int]:
        """Indices of a predict job's images that have no stored prediction yet."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(record_key(job_id), "image_count")
        pipe.hkeys(predictions_key(job_id))
        count, done = pipe.execute()
        stored = {int(_text(index)) for index in done}
        return [i for i in range(int(count or 0)) if i not in stored]

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> bool:
        """Publish a running job's progress; returns True when a cancel was requested."""
        self._redis.zadd(HEARTBEATS, {job_id: _now()}, xx=True)
        return bool(self._set_progress(keys=[record_key(job_id)], args=[json.dumps(progress)]))


def _timestamp(value: str | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(value))) + (
        f"{float(value) % 1:.6f}"[1:] + "Z"
    )


def job_document(fields: dict[str, str]) -> dict[str, Any]:
    """Turn a stored record into the JSON document ``GET /jobs/<id>`` returns."""
    return {
        "id": fields["id"],
        "type": JobType(fields["type"]),
        "status": JobStatus(fields["status"]),
        "created_at": _timestamp(fields.get("created_at")),
        "started_at": _timestamp(fields.get("started_at")),
        "finished_at": _timestamp(fields.get("finished_at")),
        "result": json.loads(fields["result"]) if "result" in fields else None,
        "error": json.loads(fields["error"]) if "error" in fields else None,
        "progress": json.loads(fields["progress"]) if "progress" in fields else None,
    }
