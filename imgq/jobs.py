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
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

KEY_PREFIX = "imgq:job:"
"""Prefix of every job key; ``imgq:job:<id>`` is the record hash."""
DONE_CHANNEL = "imgq:jobs:done"
"""Pub/sub channel that carries the id of every job reaching a terminal state."""


class JobStatus(StrEnum):
    """Every state a job can be in; ``succeeded`` and ``failed`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """Whether no further transition can happen."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobType(StrEnum):
    """What a job does."""

    PREDICT = "predict"
    FINETUNE = "finetune"


def record_key(job_id: str) -> str:
    """Key of the job's record hash."""
    return f"{KEY_PREFIX}{job_id}"


def images_key(job_id: str) -> str:
    """Key of the hash ``index -> encoded image bytes`` of a predict job."""
    return f"{KEY_PREFIX}{job_id}:images"


def predictions_key(job_id: str) -> str:
    """Key of the hash ``index -> JSON predictions`` that fills as images finish."""
    return f"{KEY_PREFIX}{job_id}:predictions"


# KEYS: record, predictions, images. ARGV: index, predictions JSON, now, ttl, job id, channel.
# Stores one image's predictions once (HSETNX: a redelivered message cannot overwrite a stored
# result), and when the last image lands assembles the result, marks the job succeeded,
# announces it, and returns its created_at (else 0: job over or gone, 1: stored, not last).
_STORE_PREDICTION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' then return 0 end
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local count = tonumber(redis.call('HGET', KEYS[1], 'image_count'))
if redis.call('HLEN', KEYS[2]) < count then return 1 end
local parts = {}
for i = 0, count - 1 do parts[#parts + 1] = redis.call('HGET', KEYS[2], tostring(i)) end
local head = redis.call('HGET', KEYS[1], 'result_head')
redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', ARGV[3],
           'result', head .. '"predictions": [' .. table.concat(parts, ', ') .. ']}')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return redis.call('HGET', KEYS[1], 'created_at')
"""

# KEYS: record, predictions, images. ARGV: error JSON, now, job id, channel.
_FAIL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[1])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""

# KEYS: record. ARGV: now.
_MARK_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
return 1
"""


@dataclass(frozen=True)
class PredictTarget:
    """What a worker needs to run one image of a predict job."""

    job_id: str
    model: str
    version: int
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
        self._store_prediction = client.register_script(_STORE_PREDICTION)
        self._fail = client.register_script(_FAIL)
        self._mark_running = client.register_script(_MARK_RUNNING)

    def create_predict_job(
        self, job_id: str, images: Sequence[bytes], model: str, version: int, top_k: int
    ) -> None:
        """Store a queued predict job with its images in one transaction."""
        head = json.dumps({"model": model, "version": version})[:-1] + ", "
        record: dict[FieldT, EncodableT] = {
            "id": job_id,
            "type": JobType.PREDICT.value,
            "status": JobStatus.QUEUED.value,
            "created_at": repr(_now()),
            "model": model,
            "version": str(version),
            "top_k": str(top_k),
            "image_count": str(len(images)),
            "result_head": head,
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(record_key(job_id), mapping=record)
        pipe.expire(record_key(job_id), self._ttl_s)
        pipe.hset(images_key(job_id), mapping={str(i): b for i, b in enumerate(images)})
        pipe.expire(images_key(job_id), self._ttl_s)
        pipe.execute()

    def delete(self, job_id: str) -> None:
        """Remove a job entirely (used when its tasks could not be enqueued)."""
        self._redis.delete(record_key(job_id), images_key(job_id), predictions_key(job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        """Return the public job document, or None when there is no such job."""
        raw = self._redis.hgetall(record_key(job_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return _document(fields)

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
                targets[job_id] = PredictTarget(job_id, _text(model), int(version), int(top_k))
        return targets

    def load_images(self, refs: Sequence[tuple[str, int]]) -> list[bytes | None]:
        """Fetch encoded images by ``(job_id, index)`` in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, index in refs:
            pipe.hget(images_key(job_id), str(index))
        return list(pipe.execute())

    def mark_running(self, job_ids: Sequence[str]) -> None:
        """Move queued jobs to running, stamping ``started_at``; others are left alone."""
        now = repr(_now())
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._mark_running(keys=[record_key(job_id)], args=[now], client=pipe)
        pipe.execute()

    def store_predictions(
        self, results: Sequence[tuple[str, int, list[dict[str, Any]]]]
    ) -> list[float]:
        """Store per-image predictions; returns the latency (s) of each job this call completed."""
        now = _now()
        pipe = self._redis.pipeline(transaction=False)
        for job_id, index, predictions in results:
            self._store_prediction(
                keys=[record_key(job_id), predictions_key(job_id), images_key(job_id)],
                args=[index, json.dumps(predictions), repr(now), self._ttl_s, job_id, DONE_CHANNEL],
                client=pipe,
            )
        # A completed job's script returns its created_at as a string; others return 0 or 1.
        return [now - float(outcome) for outcome in pipe.execute() if isinstance(outcome, bytes)]

    def fail(self, job_id: str, error: dict[str, Any]) -> bool:
        """Mark a job failed with an error envelope; False if it had already ended."""
        outcome = self._fail(
            keys=[record_key(job_id), predictions_key(job_id), images_key(job_id)],
            args=[json.dumps(error), repr(_now()), job_id, DONE_CHANNEL],
        )
        return bool(outcome)


def _timestamp(value: str | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(value))) + (
        f"{float(value) % 1:.6f}"[1:] + "Z"
    )


def _document(fields: dict[str, str]) -> dict[str, Any]:
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
    }
