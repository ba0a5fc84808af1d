"""Rollout policies applied: retrain when enough labels came or drift began, canary the result,
and promote or end the canary by its verdict.

Webhooks workers run ``apply_policies`` every ``IMGQ_ROLLOUT_CHECK_INTERVAL_S``; the one that
takes the interval's lease in Redis acts, so two workers never decide at once. What a rollout
has under way lives in Redis (``imgq:rollout:<model>``), never in a process, so killing a
worker mid-rollout loses nothing and repeats nothing:

* a retrain is claimed (``HSETNX retrain_job``) before its job exists, so one is in flight at
  most; its task is sent again if the worker died before marking it sent (the training task
  starts a job once, whatever the number of messages);
* a decision (put in canary, promote, end) is written as ``pending`` before it is logged and
  carried out; a worker that finds one pending finishes it (the actions are idempotent) and
  logs it only if its event was not logged yet.

Per model, one step per check: finish a pending decision; else follow the retrain in flight
(canary it once it succeeded); else judge the canary; else see whether a retrain is due (only
images that no version was trained on and no earlier retrain of the policy tried count, so an
ended canary or a failed retrain is not retrained again on the same data).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from imgq import redis_keys
from imgq.errors import ImgqError, ModelNotFound, NothingNew, VersionNotFound
from imgq.jobs.status import JobStatus, JobType
from imgq.jobs.store import new_job_id
from imgq.model_events import SYSTEM, ModelEvent, announce_activation, model_event, publish
from imgq.monitoring import MonitorLog
from imgq.queueing import FINETUNE_TASK, TRAIN_QUEUE
from imgq.webhooks.events import WebhookEvents
from ml.canary import canary_block
from ml.dataset_store import DatasetStore
from ml.drift import DriftRule
from ml.registry import ModelRegistry, model_id, split_model_id
from ml.retrain import retrain_params
from workers.context import WorkerApp, WorkerContext, context_of

logger = logging.getLogger(__name__)

RUN_LOCK_S = 600
"""Longest a policy check may hold the lock that keeps two checks from overlapping."""

TRIED_FIELD = "retrained_dataset_version"
"""Field of the rollout state: the dataset version the policy's last retrain was started on."""


@dataclass
class Rollout:
    """One model's policy being applied in one check."""

    context: WorkerContext
    app: WorkerApp
    registry: ModelRegistry
    datasets: DatasetStore
    model: str
    policy: dict[str, Any]

    @property
    def key(self) -> str:
        """The model's rollout state in Redis."""
        return redis_keys.rollout_state(self.model)

    def state(self) -> dict[str, str]:
        """What the model's rollout has under way."""
        found = self.context.redis.hgetall(self.key)
        return {_text(k): _text(v) for k, v in found.items()}

    def publish(self, event: dict[str, Any]) -> None:
        """Log an event and send it to the model's callback URL."""
        owner, name = split_model_id(self.model)
        publish(
            event,
            record=lambda entry: self.registry.record_event(self.model, entry),
            webhooks=WebhookEvents(self.context.redis, self.context.settings.job_ttl_s),
            callback_url=self.registry.model_settings(self.model).get("callback_url"),
            owner=str(owner),
            model=name,
        )


def apply_policies(context: WorkerContext, app: WorkerApp) -> dict[str, str] | None:
    """Apply every model's policy once; what was done per model, or None when another worker
    holds this interval's lease."""
    settings = context.settings
    interval = settings.rollout_check_interval_s
    if not context.redis.set(redis_keys.ROLLOUT_LEASE, "1", nx=True, ex=max(1, interval - 1)):
        return None
    # The interval lease says when the next check is due; this lock makes sure two checks
    # never overlap, however long one runs (a retrain claimed, its job not created yet).
    running = context.redis.lock(redis_keys.ROLLOUT_RUNNING, timeout=RUN_LOCK_S)
    if not running.acquire(blocking=False):
        return None
    try:
        return _apply_all(context, app)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # it ran out first
            running.release()


def _apply_all(context: WorkerContext, app: WorkerApp) -> dict[str, str]:
    settings = context.settings
    registry = ModelRegistry(settings.model_store, settings.model_cache_dir)
    datasets = DatasetStore(settings.model_store)
    done = {}
    for member in context.redis.smembers(redis_keys.ROLLOUT_MODELS):
        model = _text(member)
        try:
            policy = registry.model_settings(model).get("policy")
            if not policy:
                context.redis.srem(redis_keys.ROLLOUT_MODELS, model)
                continue
            done[model] = step(Rollout(context, app, registry, datasets, model, policy))
        except ModelNotFound:  # the model was deleted
            context.redis.srem(redis_keys.ROLLOUT_MODELS, model)
            context.redis.delete(redis_keys.rollout_state(model))
        except ImgqError as exc:  # this model's step fails; the others' still run
            logger.warning("rollout step failed: %s", exc.message, extra={"model": model})
            done[model] = f"failed: {exc.code}"
    return done


def step(rollout: Rollout) -> str:
    """One step of a model's rollout; says what it did."""
    state = rollout.state()
    if "pending" in state:
        return _finish(rollout, json.loads(state["pending"]))
    if "retrain_job" in state:
        return _follow_retrain(rollout, state)
    canary = rollout.registry.canary(rollout.model)
    if canary is not None:
        return _judge_canary(rollout, canary)
    return _maybe_retrain(rollout)


def _decide(rollout: Rollout, action: dict[str, Any], event: dict[str, Any]) -> str:
    """Write the decision as pending (once), then log it and carry it out."""
    pending = {"action": action, "event": event, "logged": False}
    if not rollout.context.redis.hsetnx(rollout.key, "pending", json.dumps(pending)):
        return "decision pending already"
    return _finish(rollout, pending)


def _finish(rollout: Rollout, pending: dict[str, Any]) -> str:
    """Log a pending decision if it was not yet, carry it out, and clear it."""
    redis_client = rollout.context.redis
    if not pending["logged"]:
        rollout.publish(pending["event"])
        redis_client.hset(rollout.key, "pending", json.dumps({**pending, "logged": True}))
    action = pending["action"]
    kind = str(action["kind"])
    try:
        if kind == "canary":
            rollout.registry.start_canary(
                rollout.model, action["version"], action["traffic"], SYSTEM
            )
        elif kind == "promote":
            rollout.registry.activate(rollout.model, action["version"])
        elif kind == "end_canary":
            rollout.registry.end_canary(rollout.model)
    except VersionNotFound:  # deleted since the decision: nothing left to do
        logger.warning(
            "the decision's version is gone",
            extra={"model": rollout.model, "action": kind, "version": action.get("version")},
        )
    announce_activation(redis_client, rollout.model)
    fields = ["pending", *(["retrain_job", "sent"] if action.get("ends_retrain") else [])]
    redis_client.hdel(rollout.key, *fields)
    return kind


def _follow_retrain(rollout: Rollout, state: dict[str, str]) -> str:
    job_id = state["retrain_job"]
    fields = rollout.context.jobs.fields(job_id)
    if not fields:
        event = model_event(
            ModelEvent.RETRAIN_FAILED, SYSTEM, reason="the job is gone", details={"job_id": job_id}
        )
        return _decide(rollout, {"kind": "none", "ends_retrain": True}, event)
    if "sent" not in state:
        rollout.app.send_task(FINETUNE_TASK, args=[job_id], queue=TRAIN_QUEUE)
        rollout.context.redis.hset(rollout.key, "sent", "1")
    status = JobStatus(fields["status"])
    if not status.is_terminal:
        return "retrain running"
    if status is not JobStatus.SUCCEEDED:
        error = json.loads(fields.get("error") or "null")
        event = model_event(
            ModelEvent.RETRAIN_FAILED,
            SYSTEM,
            reason=f"the retrain job {status.value}",
            details={"job_id": job_id, "error": error},
        )
        return _decide(rollout, {"kind": "none", "ends_retrain": True}, event)
    result = json.loads(fields["result"])
    version, traffic = int(result["version"]), float(rollout.policy["canary_traffic"])
    event = model_event(
        ModelEvent.CANARY_STARTED,
        SYSTEM,
        version=version,
        reason="retrained by the policy; judged on live labels before it serves everyone",
        details={"traffic": traffic, "job_id": job_id, "retrain": result.get("retrain")},
    )
    action = {"kind": "canary", "version": version, "traffic": traffic, "ends_retrain": True}
    return _decide(rollout, action, event)


def _judge_canary(rollout: Rollout, canary: dict[str, Any]) -> str:
    settings = rollout.context.settings
    log = MonitorLog(rollout.context.redis, settings.job_ttl_s)
    block = canary_block(
        rollout.registry,
        rollout.model,
        lambda number: [
            e.as_labelled() for e in log.window(rollout.model, number, settings.monitor_window)
        ],
        rule=DriftRule(settings.drift_alpha, settings.drift_min_predictions),
        builtin_reference=settings.builtin_reference_file,
    )
    if block is None:
        return "no canary"
    version, policy = block["version"], rollout.policy
    numbers = {key: block[key] for key in ("active", "candidate", "difference", "interval")}
    numbers["p_value"], numbers["verdict"] = block["p_value"], block["verdict"]
    if time.time() - block["started_at"] > float(policy["max_canary_hours"]) * 3600:
        reason = f"undecided after {policy['max_canary_hours']} hours"
        event = model_event(ModelEvent.CANARY_ENDED, SYSTEM, version=version, reason=reason)
        return _decide(rollout, {"kind": "end_canary"}, {**event, "details": numbers})
    enough = block["candidate"]["count"] >= int(policy["min_canary_feedback"])
    if policy["promote"] != "auto" or not enough or block["verdict"] == "undecided":
        return f"canary {block['verdict']}"
    if block["verdict"] == "better":
        reason = (
            f"canary v{version} more accurate on live labels: {block['candidate']['accuracy']:.3f}"
            f" vs {block['active']['accuracy']:.3f} (95% interval of the difference "
            f"{block['interval'][0]:+.3f}..{block['interval'][1]:+.3f})"
        )
        event = model_event(ModelEvent.PROMOTED, SYSTEM, version=version, reason=reason)
        return _decide(
            rollout, {"kind": "promote", "version": version}, {**event, "details": numbers}
        )
    reason = (
        f"canary v{version} less accurate on live labels: {block['candidate']['accuracy']:.3f}"
        f" vs {block['active']['accuracy']:.3f}"
    )
    event = model_event(ModelEvent.CANARY_ENDED, SYSTEM, version=version, reason=reason)
    return _decide(rollout, {"kind": "end_canary"}, {**event, "details": numbers})


def _retrain_reason(rollout: Rollout) -> str | None:
    """Why a retrain is due, or None.

    Only images that no version of the model was trained on, and that no retrain of the policy
    tried already, count: a canary that was ended (worse, timed out, stopped by hand) or a
    retrain that failed is not followed by another retrain of the same images.
    """
    policy, registry = rollout.policy, rollout.registry
    active = registry.get(rollout.model)
    trained_on = active.training.get("dataset") or {}
    owner, name = split_model_id(rollout.model)
    dataset_name = trained_on.get("name", name)
    dataset = model_id(str(owner), dataset_name)
    latest = rollout.datasets.latest(dataset)
    if latest is None:
        return None
    since = _newest_trained_on(rollout, dataset_name)
    if since is not None and latest.version <= since:
        return None  # nothing new since the last retrain
    if policy.get("retrain_on_drift") and rollout.context.redis.exists(
        redis_keys.monitor_drifted(rollout.model, active.version)
    ):
        return f"version {active.version} drifted"
    threshold = policy.get("retrain_after_feedback")
    if not threshold or not trained_on:
        return None
    added = rollout.datasets.additions(dataset, since, latest.version)
    labelled = int(added["per_source"].get("feedback", 0))
    if labelled >= int(threshold):
        return f"{labelled} labelled images from feedback since dataset version {since}"
    return None


def _newest_trained_on(rollout: Rollout, dataset_name: str) -> int | None:
    """The newest version of the dataset that a version of the model was trained on, or that
    a retrain of the policy was started on."""
    found = []
    for number in rollout.registry.versions(rollout.model):
        record = rollout.registry.get(rollout.model, number).training.get("dataset") or {}
        if record.get("name") == dataset_name and record.get("version") is not None:
            found.append(int(record["version"]))
    tried = rollout.state().get(TRIED_FIELD)
    if tried is not None:
        found.append(int(tried))
    return max(found, default=None)


def _maybe_retrain(rollout: Rollout) -> str:
    reason = _retrain_reason(rollout)
    if reason is None:
        return "nothing due"
    registry, context = rollout.registry, rollout.context
    try:
        params = retrain_params(registry, rollout.datasets, rollout.model, {})
    except NothingNew:
        return "nothing new to train on"
    except ImgqError as exc:
        logger.warning("policy cannot retrain: %s", exc.message, extra={"model": rollout.model})
        return "cannot retrain"
    job_id = new_job_id()
    if not context.redis.hsetnx(rollout.key, "retrain_job", job_id):
        return "retrain claimed already"
    context.redis.hset(rollout.key, TRIED_FIELD, str(params["dataset_version"]))
    owner, _ = split_model_id(rollout.model)
    context.jobs.create_job(job_id, JobType.FINETUNE, params, client=str(owner))
    rollout.publish(
        model_event(
            ModelEvent.RETRAIN_STARTED,
            SYSTEM,
            reason=reason,
            details={"job_id": job_id, "dataset_version": params["dataset_version"]},
        )
    )
    rollout.app.send_task(FINETUNE_TASK, args=[job_id], queue=TRAIN_QUEUE)
    context.redis.hset(rollout.key, "sent", "1")
    return "retrain started"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run_policies(app: WorkerApp) -> dict[str, str] | None:
    """``apply_policies`` with the context of a webhooks worker's app."""
    return apply_policies(context_of(app), app)
