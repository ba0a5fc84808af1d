"""Lua scripts for job-state transitions that race between processes.

Redis runs each script atomically, so "is the job still open?" and "change it" can never be
split by another worker finishing, failing or canceling the same job. Every transition to a
terminal state publishes the job id on ``JOBS_DONE_CHANNEL`` for long-polling clients, takes the
job out of the registries that watch open jobs, and schedules its webhook. The terminal states
and key names are filled in from ``JobStatus`` and ``imgq.redis_keys``, so Lua and Python cannot
disagree about them.
"""

from __future__ import annotations

from imgq import redis_keys
from imgq.jobs.status import TERMINAL, JobStatus, JobType
from imgq.quotas import RELEASE_ON_END

_TERMINAL_TEST = " or ".join(f"status == '{status.value}'" for status in sorted(TERMINAL))

_ENDED = (
    RELEASE_ON_END
    + f"""
local function ended(status)
  return (not status) or {_TERMINAL_TEST}
end
-- A job that ends leaves the registries watching open jobs, gives its client's quota back
-- (imgq.quotas), and one with a callback URL gets its webhook scheduled in the same atomic
-- step, so no crash between "job ended" and "send the webhook" can lose the delivery.
local function on_end(record, now, job_id)
  release_quota(record, job_id)
  redis.call('ZREM', '{redis_keys.HEARTBEATS}', job_id)
  redis.call('ZREM', '{redis_keys.PREDICT_CHECKS}', job_id)
  if redis.call('HEXISTS', record, 'callback_url') == 1 then
    redis.call('ZADD', '{redis_keys.WEBHOOKS_SCHEDULED}', 'NX', now, job_id)
  end
end
"""
)

STORE_PREDICTION = (
    _ENDED
    + f"""
-- KEYS: record, predictions, images, the version's monitoring window, the monitored set.
-- ARGV: index, predictions JSON, now, ttl, job id, channel, result head, result tail,
--       window entry, window size (0: do not record), monitored member.
-- Stores one image's predictions once (HSETNX: a redelivered message cannot overwrite a stored
-- result) and records it once in the version's window (see imgq.monitoring); when the last
-- image lands, joins the result between head and tail (see imgq.jobs.documents.PredictResult),
-- marks the job succeeded, announces it and returns its created_at (else 0: job over or gone,
-- 1: stored, not the last).
if ended(redis.call('HGET', KEYS[1], 'status')) then
  redis.call('INCR', '{redis_keys.REDUNDANT_RESULTS}')
  return 0
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  redis.call('INCR', '{redis_keys.REDUNDANT_RESULTS}')
  return 1
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
local window = tonumber(ARGV[10])
if window > 0 then
  redis.call('LPUSH', KEYS[4], ARGV[9])
  redis.call('LTRIM', KEYS[4], 0, window - 1)
  redis.call('SADD', KEYS[5], ARGV[11])
end
local count = tonumber(redis.call('HGET', KEYS[1], 'image_count'))
if redis.call('HLEN', KEYS[2]) < count then return 1 end
local parts = {{}}
for i = 0, count - 1 do parts[#parts + 1] = redis.call('HGET', KEYS[2], tostring(i)) end
redis.call('HSET', KEYS[1], 'status', '{JobStatus.SUCCEEDED.value}', 'finished_at', ARGV[3],
           'result', ARGV[7] .. table.concat(parts, ', ') .. ARGV[8])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[6], ARGV[5])
on_end(KEYS[1], ARGV[3], ARGV[5])
return redis.call('HGET', KEYS[1], 'created_at')
"""
)

FINISH = (
    _ENDED
    + """
-- KEYS: record, predictions, images. ARGV: status, field, JSON, now, job id, channel.
-- Ends a job (succeeded with a result, failed with an error, or canceled) unless it has ended.
if ended(redis.call('HGET', KEYS[1], 'status')) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[4])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[4])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[6], ARGV[5])
on_end(KEYS[1], ARGV[4], ARGV[5])
return 1
"""
)

MARK_RUNNING = f"""
-- KEYS: record. ARGV: now. Returns 1 if this call started the job.
if redis.call('HGET', KEYS[1], 'status') ~= '{JobStatus.QUEUED.value}' then return 0 end
redis.call('HSET', KEYS[1], 'status', '{JobStatus.RUNNING.value}', 'started_at', ARGV[1])
return 1
"""

CANCEL = (
    _ENDED
    + f"""
-- KEYS: record, predictions, images. ARGV: now, job id, channel.
-- queued: canceled at once. running fine-tune: flagged; the worker stops between batches.
-- Returns a CancelOutcome: canceled, cancel_requested, ended, not_cancelable, missing.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == '{JobStatus.QUEUED.value}' then
  redis.call('HSET', KEYS[1], 'status', '{JobStatus.CANCELED.value}', 'finished_at', ARGV[1])
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  on_end(KEYS[1], ARGV[1], ARGV[2])
  return 'canceled'
end
if status == '{JobStatus.RUNNING.value}'
   and redis.call('HGET', KEYS[1], 'type') == '{JobType.FINETUNE.value}' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'cancel_requested'
end
if status == '{JobStatus.RUNNING.value}' then return 'not_cancelable' end
return 'ended'
"""
)

SET_PROGRESS = f"""
-- KEYS: record. ARGV: progress JSON. Returns 1 if a cancel was requested.
if redis.call('HGET', KEYS[1], 'status') == '{JobStatus.RUNNING.value}' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
end
if redis.call('HGET', KEYS[1], 'cancel_requested') then return 1 end
return 0
"""
