"""Lua scripts for job-state transitions that race between processes.

Redis runs each script atomically, so "is the job still open?" and "change it" can never be
split by another worker finishing, failing or canceling the same job. Every transition to a
terminal state publishes the job id on ``DONE_CHANNEL`` for long-polling clients.
"""

from __future__ import annotations

WEBHOOKS_SCHEDULED = "imgq:webhooks:scheduled"
"""Sorted set of job ids whose webhook is due, scored by due time."""
HEARTBEATS = "imgq:jobs:heartbeats"
"""Sorted set of running long jobs (fine-tunes, exports), scored by their last heartbeat."""
REDUNDANT_RESULTS = "imgq:stats:redundant-results"
"""Counter of image results computed again (a redelivered message) and discarded."""
RESENT_IMAGES = "imgq:stats:resent-images"
"""Counter of images the reaper sent again because their message was lost."""
PREDICT_CHECKS = "imgq:jobs:predict-checks"
"""Sorted set of open predict jobs, scored by when the reaper next looks at them."""

_ENDED = (
    """
local function ended(status)
  return (not status) or status == 'succeeded' or status == 'failed' or status == 'canceled'
end
-- A job that ends with a callback URL gets its webhook scheduled in the same atomic step,
-- so no crash between "job ended" and "send the webhook" can lose the delivery.
local function schedule_webhook(record, now, job_id)
  redis.call('ZREM', '"""
    + HEARTBEATS
    + """', job_id)  -- an ended job needs no watching
  redis.call('ZREM', '"""
    + PREDICT_CHECKS
    + """', job_id)
  if redis.call('HEXISTS', record, 'callback_url') == 1 then
    redis.call('ZADD', '"""
    + WEBHOOKS_SCHEDULED
    + """', 'NX', now, job_id)
  end
end
"""
)

STORE_PREDICTION = (
    _ENDED
    + """
-- KEYS: record, predictions, images.
-- ARGV: index, predictions JSON, now, ttl, job id, channel.
-- Stores one image's predictions once (HSETNX: a redelivered message cannot overwrite a stored
-- result); when the last image lands, assembles the result, marks the job succeeded, announces
-- it and returns its created_at (else 0: job over or gone, 1: stored, not the last).
if ended(redis.call('HGET', KEYS[1], 'status')) then
  redis.call('INCR', '"""
    + REDUNDANT_RESULTS
    + """')
  return 0
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  redis.call('INCR', '"""
    + REDUNDANT_RESULTS
    + """')
  return 1
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
local count = tonumber(redis.call('HGET', KEYS[1], 'image_count'))
if redis.call('HLEN', KEYS[2]) < count then return 1 end
local parts = {}
for i = 0, count - 1 do parts[#parts + 1] = redis.call('HGET', KEYS[2], tostring(i)) end
local model = redis.call('HGET', KEYS[1], 'model')
local version = redis.call('HGET', KEYS[1], 'version')
redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', ARGV[3], 'result',
           '{"model": "' .. model .. '", "version": ' .. version .. ', "predictions": ['
           .. table.concat(parts, ', ') .. ']}')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[6], ARGV[5])
schedule_webhook(KEYS[1], ARGV[3], ARGV[5])
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
schedule_webhook(KEYS[1], ARGV[4], ARGV[5])
return 1
"""
)

MARK_RUNNING = """
-- KEYS: record. ARGV: now. Returns 1 if this call started the job.
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
return 1
"""

CANCEL = (
    _ENDED
    + """
-- KEYS: record, predictions, images. ARGV: now, job id, channel.
-- queued: canceled at once. running fine-tune: flagged; the worker stops between batches.
-- Returns the outcome: canceled, cancel_requested, ended, not_cancelable, missing.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  schedule_webhook(KEYS[1], ARGV[1], ARGV[2])
  return 'canceled'
end
if status == 'running' and redis.call('HGET', KEYS[1], 'type') == 'finetune' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'cancel_requested'
end
if status == 'running' then return 'not_cancelable' end
return 'ended'
"""
)

SET_PROGRESS = """
-- KEYS: record. ARGV: progress JSON. Returns 1 if a cancel was requested.
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
end
if redis.call('HGET', KEYS[1], 'cancel_requested') then return 1 end
return 0
"""
