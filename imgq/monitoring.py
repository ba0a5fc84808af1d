"""What each model version sees in production, and what clients say it should have seen.

Per ``(model, version)`` Redis keeps a *window*: the newest ``IMGQ_MONITOR_WINDOW``
predictions, each ``[job id, image index, top-1 label, top-1 confidence]``, in a capped list
(``LPUSH`` + ``LTRIM``: constant memory per version). A prediction enters it in the same Lua
step that stores the image's result (``imgq.jobs.scripts.STORE_PREDICTION``), so a redelivered
message never counts twice and recording costs no extra round trip.

Feedback is the true label of an image of a predict job (``POST /jobs/<id>/feedback``), kept in
a hash beside the job for as long as the job (``imgq:job:<id>:feedback``): sending it again
replaces the label, so the window's online accuracy counts each image once. Totals per
version (``imgq_feedback_total``) count the first label of each image only.

Reading a window joins the two: each prediction with the label a client gave it, if any. What
the numbers mean, and the drift tests, are in ``ml.drift``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from imgq import redis_keys

_SAVE_FEEDBACK = """
-- KEYS: the job's feedback hash, the version's feedback totals.
-- ARGV: ttl, then (index, label, predicted label) triples. A first label counts in the totals
-- (correct or incorrect); a later one replaces it without counting again.
for i = 2, #ARGV, 3 do
  local first = redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1
  if first then
    local outcome = ARGV[i + 1] == ARGV[i + 2] and 'correct' or 'incorrect'
    redis.call('HINCRBY', KEYS[2], outcome, 1)
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""


@dataclass(frozen=True)
class WindowEntry:
    """One prediction in a version's window, with the client's label if it sent one."""

    job_id: str
    index: int
    label: str
    confidence: float
    truth: str | None
    at: float | None
    """When it was served (None for entries written before times were kept)."""

    def as_labelled(self) -> tuple[str, float, str | None, float | None]:
        """``(label, confidence, truth, at)``, as ``ml.canary`` takes a window."""
        return self.label, self.confidence, self.truth, self.at


def window_entry(job_id: str, index: int, label: str, confidence: float, at: float) -> str:
    """A prediction as the window stores it (``at``: when it was stored, Unix time)."""
    return json.dumps([job_id, index, label, round(confidence, 6), round(at, 3)])


class MonitorLog:
    """Windows, feedback and drift state of every monitored model version.

    Args:
        client: Redis.
        job_ttl_s: how long feedback lives (as long as job records).
    """

    def __init__(self, client: redis.Redis, job_ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = job_ttl_s
        self._save_feedback = client.register_script(_SAVE_FEEDBACK)

    def versions(self) -> list[tuple[str, int]]:
        """Every ``(model id, version)`` that has served a prediction."""
        found = []
        for member in self._redis.smembers(redis_keys.MONITORED_VERSIONS):
            model, _, version = _text(member).rpartition(":")
            found.append((model, int(version)))
        return sorted(found)

    def window(self, model: str, version: int, size: int) -> list[WindowEntry]:
        """The newest ``size`` predictions of a version, newest first, with their feedback."""
        if size <= 0:  # LRANGE 0 -1 would be the whole list
            return []
        raw = self._redis.lrange(redis_keys.monitor_window(model, version), 0, size - 1)
        rows = [json.loads(entry) for entry in raw]
        jobs = sorted({row[0] for row in rows})
        pipe = self._redis.pipeline(transaction=False)
        for job_id in jobs:
            pipe.hgetall(redis_keys.job_feedback(job_id))
        labels = {
            job_id: {_text(k): _text(v) for k, v in found.items()}
            for job_id, found in zip(jobs, pipe.execute(), strict=True)
        }
        return [
            WindowEntry(
                job_id,
                index,
                label,
                float(confidence),
                labels[job_id].get(str(index)),
                float(rest[0]) if rest else None,
            )
            for job_id, index, label, confidence, *rest in rows
        ]

    def save_feedback(
        self,
        model: str,
        version: int,
        job_id: str,
        labels: Sequence[str | None],
        predicted: Sequence[str],
    ) -> list[str | None]:
        """Store the true labels of a job's images (``None``: unknown, leaves what was sent
        before); returns every label the job now has, by image."""
        triples = [
            part
            for index, (label, guess) in enumerate(zip(labels, predicted, strict=True))
            if label is not None
            for part in (str(index), label, guess)
        ]
        stored = self._save_feedback(
            keys=[redis_keys.job_feedback(job_id), redis_keys.monitor_feedback(model, version)],
            args=[self._ttl_s, *triples],
        )
        pairs = dict(zip(stored[::2], stored[1::2], strict=True))
        found = {int(_text(k)): _text(v) for k, v in pairs.items()}
        return [found.get(index) for index in range(len(labels))]

    def feedback_totals(self, model: str, version: int) -> dict[str, int]:
        """First labels received for a version: ``{"correct", "incorrect"}``."""
        found = self._redis.hgetall(redis_keys.monitor_feedback(model, version))
        totals = {_text(k): int(v) for k, v in found.items()}
        return {"correct": totals.get("correct", 0), "incorrect": totals.get("incorrect", 0)}

    def forget(self, model: str, version: int) -> None:
        """Stop monitoring a version that no longer exists (its model or it was deleted)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.srem(redis_keys.MONITORED_VERSIONS, f"{model}:{version}")
        pipe.delete(
            redis_keys.monitor_window(model, version),
            redis_keys.monitor_feedback(model, version),
            redis_keys.monitor_report(model, version),
            redis_keys.monitor_drifted(model, version),
        )
        pipe.execute()

    def save_report(self, model: str, version: int, report: dict[str, Any]) -> None:
        """Keep the latest drift check of a version, for ``/metrics``."""
        self._redis.set(redis_keys.monitor_report(model, version), json.dumps(report))

    def report(self, model: str, version: int) -> dict[str, Any] | None:
        """The latest drift check of a version, if any ran."""
        raw = self._redis.get(redis_keys.monitor_report(model, version))
        return json.loads(raw) if raw else None

    def enter_drift(self, model: str, version: int) -> bool:
        """Mark a version drifted; True only for the call that made the transition."""
        return bool(self._redis.set(redis_keys.monitor_drifted(model, version), "1", nx=True))

    def leave_drift(self, model: str, version: int) -> None:
        """Mark a version not drifted, so that its next drift is a new transition."""
        self._redis.delete(redis_keys.monitor_drifted(model, version))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
