"""Job state in Redis: records and their transitions, the registries that watch running jobs,
the Lua scripts that make transitions atomic, per-client indexes and idempotency keys.

A newcomer's map: ``store`` (records, transitions: how a job ends), ``predict_images`` (a
predict job's per-image fan-out and its results), ``registries`` (heartbeats of long jobs and
the reaper's schedule of predict checks), ``scripts`` (the Lua), ``status`` (states, types,
cancel outcomes), ``documents`` (the JSON shapes clients read).
"""
