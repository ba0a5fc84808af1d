"""What one client may have in flight, and how fast it may ask: per-client quotas in Redis.

Every job a client submits is *admitted* first, in one Lua step that checks the client's
quota and records the job's cost, or refuses with the limit it would pass
(``429 quota_exceeded``). A job gives its cost back when it ends, in the same script that
ends it (``imgq.jobs.scripts``: ``on_end``), so a crash cannot leak a quota; members older
than the job TTL are pruned at the next admission, for records that expired instead.

Costs per job: one job in flight; a predict job's images and their bytes (what it holds in
Redis until its images are predicted); a fine-tune, ingest or export counts as a long job and
its upload's bytes as upload bytes; an explained predict job also counts as an explain job.

The predict-image limit is what keeps the queue fair: prediction workers take images in queue
order, so a client's job waits behind at most every other client's admitted images. With each
client allowed ``IMGQ_QUOTA_QUEUED_IMAGES`` (two batches by default), another client's job
waits a batch or two per busy client, however many jobs one of them sends.

Request rate is a token bucket per client (``IMGQ_QUOTA_RATE_PER_S``, burst
``IMGQ_QUOTA_BURST``), also one Lua step; the API answers with ``RateLimit-*`` headers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum

import redis

QUOTA_PREFIX = "imgq:quota:"
"""Prefix of the per-client quota keys: ``<prefix><client>:jobs`` (sorted set of job ids by
admission time) and ``<prefix><client>:costs`` (hash job id -> ``kind images bytes``)."""
RATE_PREFIX = "imgq:rate:"
"""Prefix of the per-client token buckets: ``<prefix><client>`` (hash tokens, at)."""


def quota_keys(client: str) -> list[str]:
    """The two keys of a client's quota."""
    return [f"{QUOTA_PREFIX}{client}:jobs", f"{QUOTA_PREFIX}{client}:costs"]


class JobKind(StrEnum):
    """How a job counts against a quota."""

    PREDICT = "predict"
    EXPLAIN = "explain"
    LONG = "long"
    """A fine-tune, ingest or export: hours of a training worker."""


@dataclass(frozen=True)
class Quota:
    """One client's limits (the settings' defaults, or its key's own)."""

    jobs: int
    """Jobs in flight (queued or running)."""
    queued_images: int
    """Images of its predict jobs not yet predicted."""
    queued_image_bytes: int
    """Bytes of those images, held in Redis."""
    long_jobs: int
    """Fine-tunes, ingests and exports in flight."""
    explain_jobs: int
    """Explained predict jobs in flight."""
    upload_bytes: int
    """Bytes of uploads waiting for or used by its long jobs."""


_ADMIT = """
-- KEYS: the client's jobs (sorted set), its costs (hash).
-- ARGV: now, prune before, job id, kind, images, bytes, then the limits: jobs, images,
--       image bytes, long jobs, explain jobs, upload bytes.
-- Returns 'ok' (the job is admitted and its cost recorded), or the name of the limit it would
-- pass.
for _, job in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('HDEL', KEYS[2], job)
end
local jobs, images, image_bytes, long, explain, upload = 0, 0, 0, 0, 0, 0
local costs = redis.call('HVALS', KEYS[2])
for _, cost in ipairs(costs) do
  local kind, n, size = string.match(cost, '^(%S+) (%d+) (%d+)$')
  jobs = jobs + 1
  if kind == 'predict' or kind == 'explain' then
    images = images + tonumber(n)
    image_bytes = image_bytes + tonumber(size)
  end
  if kind == 'explain' then explain = explain + 1 end
  if kind == 'long' then
    long = long + 1
    upload = upload + tonumber(size)
  end
end
local kind, n, size = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if jobs + 1 > tonumber(ARGV[7]) then return 'jobs' end
if kind ~= 'long' then
  if images + n > tonumber(ARGV[8]) and images > 0 then return 'queued_images' end
  if image_bytes + size > tonumber(ARGV[9]) and images > 0 then return 'queued_image_bytes' end
end
if kind == 'long' then
  if long + 1 > tonumber(ARGV[10]) then return 'long_jobs' end
  if upload + size > tonumber(ARGV[12]) and long > 0 then return 'upload_bytes' end
end
if kind == 'explain' and explain + 1 > tonumber(ARGV[11]) then return 'explain_jobs' end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], kind .. ' ' .. n .. ' ' .. size)
return 'ok'
"""

_BUCKET_STEP = """
-- KEYS: the client's bucket. ARGV: now, rate per second, burst.
-- Returns {1, tokens left} when a token was taken, else {0, seconds until one is back}.
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]) or burst, tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
if taken == 1 then return {1, tostring(tokens)} end
return {0, tostring((1 - tokens) / rate)}
"""

RELEASE_ON_END = f"""
local function release_quota(record, job_id)
  local client = redis.call('HGET', record, 'client')
  if client then
    redis.call('ZREM', '{QUOTA_PREFIX}' .. client .. ':jobs', job_id)
    redis.call('HDEL', '{QUOTA_PREFIX}' .. client .. ':costs', job_id)
  end
end
"""
"""Lua: a job that ends gives its quota back (called by every job-ending script)."""


@dataclass(frozen=True)
class Bucket:
    """The outcome of taking a request token."""

    allowed: bool
    remaining: float
    retry_after_s: float


class Quotas:
    """Admission of jobs and the request-rate buckets, per client."""

    def __init__(self, client: redis.Redis, job_ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = job_ttl_s
        self._admit = client.register_script(_ADMIT)
        self._take = client.register_script(_BUCKET_STEP)

    def admit(
        self,
        client: str,
        job_id: str,
        kind: JobKind,
        quota: Quota,
        *,
        images: int = 0,
        size: int = 0,
    ) -> str | None:
        """Admit a job and record its cost; None, or the name of the limit it would pass.

        A job bigger than a limit on its own is still admitted when the client has nothing
        else of that kind in flight, so a limit never makes a single allowed request
        impossible (``IMGQ_MAX_IMAGES_PER_JOB`` and the upload limits bound those).
        """
        now = time.time()
        refused = self._admit(
            keys=quota_keys(client),
            args=[
                now,
                now - self._ttl_s,
                job_id,
                kind.value,
                images,
                size,
                quota.jobs,
                quota.queued_images,
                quota.queued_image_bytes,
                quota.long_jobs,
                quota.explain_jobs,
                quota.upload_bytes,
            ],
        )
        text = refused.decode() if isinstance(refused, bytes) else str(refused)
        return None if text == "ok" else text

    def release(self, client: str, job_id: str) -> None:
        """Give a job's cost back (a submission undone before its job existed)."""
        jobs, costs = quota_keys(client)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(jobs, job_id)
        pipe.hdel(costs, job_id)
        pipe.execute()

    def in_flight(self, client: str) -> int:
        """Jobs the client has in flight."""
        return int(self._redis.zcard(quota_keys(client)[0]))

    def take_token(self, client: str, rate_per_s: float, burst: int) -> Bucket:
        """Take one request token from the client's bucket."""
        allowed, value = self._take(
            keys=[f"{RATE_PREFIX}{client}"], args=[time.time(), rate_per_s, burst]
        )
        number = float(value.decode() if isinstance(value, bytes) else value)
        if int(allowed) == 1:
            return Bucket(True, math.floor(number), 0.0)
        return Bucket(False, 0, number)
