"""A predict job's fan-out: one message per image, results stored per image, the last completes.

The API stores a job's images with its record (``JobStore.create_predict_job``); prediction
workers take images from many jobs into one batch, so they read, pin and store *per image*
through this class. The version a job runs on is pinned when a worker takes its first image,
so a job never mixes versions; the last image's result completes the job inside the
``STORE_PREDICTION`` script, so a job ends exactly once and a redelivered message cannot
change a stored result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from imgq import redis_keys
from imgq.jobs import scripts
from imgq.jobs.documents import PredictResult
from imgq.jobs.status import JobStatus
from imgq.monitoring import window_entry


@dataclass(frozen=True)
class PredictTarget:
    """What a worker needs to run one image of a predict job."""

    job_id: str
    model: str
    version: int | None  # None: whichever version the worker serves when it starts the job
    top_k: int


@dataclass(frozen=True)
class ImageResult:
    """One image's top-k, ready to store."""

    job_id: str
    index: int
    predictions: list[dict[str, Any]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def job_keys(job_id: str) -> list[str]:
    """The keys every job-ending script takes: record, predictions, images."""
    return [
        redis_keys.job_record(job_id),
        redis_keys.job_predictions(job_id),
        redis_keys.job_images(job_id),
    ]


class PredictImages:
    """Per-image reads and writes of predict jobs, for prediction workers and the reaper."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._store_prediction = client.register_script(scripts.STORE_PREDICTION)

    def targets(self, job_ids: Sequence[str]) -> dict[str, PredictTarget | None]:
        """Fetch what workers need for each job; None for jobs gone or already terminal."""
        return self.targets_and_images(job_ids, [])[0]

    def targets_and_images(
        self, job_ids: Sequence[str], refs: Sequence[tuple[str, int]]
    ) -> tuple[dict[str, PredictTarget | None], list[bytes | None]]:
        """``targets`` of ``job_ids`` and the encoded images ``refs`` name (``load``), in one
        round trip: what a batch reads before it runs."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(redis_keys.job_record(job_id), ["status", "model", "version", "top_k"])
        for job_id, index in refs:
            pipe.hget(redis_keys.job_images(job_id), str(index))
        replies = pipe.execute()
        records, images = replies[: len(job_ids)], replies[len(job_ids) :]
        targets: dict[str, PredictTarget | None] = {}
        for job_id, (status, model, version, top_k) in zip(job_ids, records, strict=True):
            if status is None or JobStatus(_text(status)).is_terminal:
                targets[job_id] = None
            else:
                pinned = None if version is None else int(version)
                targets[job_id] = PredictTarget(job_id, _text(model), pinned, int(top_k))
        return targets, list(images)

    def pin_versions(self, versions: dict[str, int]) -> dict[str, int]:
        """Pin each job to a version unless one is pinned already; returns the pinned versions."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, version in versions.items():
            pipe.hsetnx(redis_keys.job_record(job_id), "version", str(version))
            pipe.hget(redis_keys.job_record(job_id), "version")
        replies = pipe.execute()
        return {job_id: int(replies[2 * i + 1]) for i, job_id in enumerate(versions)}

    def image_count(self, job_id: str) -> int:
        """How many images the job has."""
        return int(self._redis.hget(redis_keys.job_record(job_id), "image_count") or 0)

    def load(self, refs: Sequence[tuple[str, int]]) -> list[bytes | None]:
        """Fetch encoded images by ``(job_id, index)`` in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id, index in refs:
            pipe.hget(redis_keys.job_images(job_id), str(index))
        return list(pipe.execute())

    def store(
        self,
        model: str,
        version: int,
        results: Sequence[ImageResult],
        *,
        monitor: tuple[str, int] | None = None,
    ) -> list[float]:
        """Store per-image predictions of version ``version`` of the model results call
        ``model`` (its name, not its id); returns the latency (s) of each job this call
        completed.

        ``monitor`` is ``(model id, window size)``: each newly stored prediction's top-1 also
        enters the version's monitoring window (``imgq.monitoring``), in the same script.
        """
        now = time.time()
        head, tail = PredictResult.frame(model, version)
        model_id, window = monitor if monitor is not None else ("", 0)
        keys = [redis_keys.monitor_window(model_id, version), redis_keys.MONITORED_VERSIONS]
        pipe = self._redis.pipeline(transaction=False)
        for result in results:
            entry = ""
            if window:
                top: dict[str, Any] = result.predictions[0] if result.predictions else {}
                label, score = str(top.get("label", "")), float(top.get("score", 0.0))
                entry = window_entry(result.job_id, result.index, label, score, now)
            self._store_prediction(
                keys=[*job_keys(result.job_id), *keys],
                args=[
                    result.index,
                    json.dumps(result.predictions),
                    repr(now),
                    self._ttl_s,
                    result.job_id,
                    redis_keys.JOBS_DONE_CHANNEL,
                    head,
                    tail,
                    entry,
                    window,
                    f"{model_id}:{version}",
                ],
                client=pipe,
            )
        # A completed job's script returns its created_at as a string; others return 0 or 1.
        return [now - float(outcome) for outcome in pipe.execute() if isinstance(outcome, bytes)]

    def missing(self, job_id: str) -> list[int]:
        """Indices of a job's images that have no stored prediction yet."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(redis_keys.job_record(job_id), "image_count")
        pipe.hkeys(redis_keys.job_predictions(job_id))
        count, done = pipe.execute()
        stored = {int(_text(index)) for index in done}
        return [i for i in range(int(count or 0)) if i not in stored]
