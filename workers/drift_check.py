"""The drift check: every monitored version's window tested, and drift announced once.

Webhooks workers run it every ``IMGQ_DRIFT_CHECK_INTERVAL_S`` from their housekeeping thread;
the one that takes the interval's lease in Redis checks, so a transition into drift is
announced exactly once however many run. Each check stores the version's monitoring document
for ``/metrics`` (``imgq.monitoring``). A version that enters drift gets a ``drift_detected``
entry in its model's event log and, if the model has a ``callback_url``, a signed
``model.drift_detected`` webhook; it can only be announced again after a check finds it back
within bounds.
"""

from __future__ import annotations

import logging
from typing import Any

from imgq.errors import NotFound
from imgq.model_events import SYSTEM, ModelEvent, model_event
from imgq.monitoring import MonitorLog
from imgq.redis_keys import DRIFT_CHECK_LEASE
from imgq.webhooks.events import WebhookEvents
from ml.drift import DriftRule, version_monitoring
from ml.registry import ModelRegistry, split_model_id
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

DRIFT_EVENT = "model.drift_detected"
"""Type of the webhook sent when a version starts to drift."""


def check_drift(context: WorkerContext) -> dict[tuple[str, int], bool | None] | None:
    """Check every monitored version once; its verdict per ``(model, version)``, or None when
    another worker holds this interval's lease."""
    settings = context.settings
    if not context.redis.set(
        DRIFT_CHECK_LEASE, "1", nx=True, ex=max(1, settings.drift_check_interval_s - 1)
    ):
        return None
    registry = ModelRegistry(settings.model_store, settings.model_cache_dir)
    log = MonitorLog(context.redis, settings.job_ttl_s)
    rule = DriftRule(settings.drift_alpha, settings.drift_min_predictions)
    verdicts: dict[tuple[str, int], bool | None] = {}
    for model, version in log.versions():
        entries = log.window(model, version, settings.drift_window)
        try:
            report = version_monitoring(
                registry,
                model,
                version,
                [(entry.label, entry.confidence, entry.truth) for entry in entries],
                window=settings.drift_window,
                rule=rule,
                builtin_reference=settings.builtin_reference_file,
            )
        except NotFound:  # the version or its model was deleted
            log.forget(model, version)
            continue
        log.save_report(model, version, report)
        verdicts[(model, version)] = report["drifted"]
        if report["drifted"]:
            if log.enter_drift(model, version):
                _announce(context, registry, model, version, report)
        elif report["drifted"] is False:
            log.leave_drift(model, version)
    return verdicts


def _announce(
    context: WorkerContext,
    registry: ModelRegistry,
    model: str,
    version: int,
    report: dict[str, Any],
) -> None:
    """Log the transition in the model's event log, and send its webhook if one is set."""
    owner, name = split_model_id(model)
    summary = {
        "window": report["window"],
        "predictions": report["predictions"],
        "classes_p_value": report["classes"]["p_value"],
        "confidence_p_value": report["confidence"]["p_value"],
    }
    registry.record_event(
        model,
        model_event(
            ModelEvent.DRIFT_DETECTED,
            SYSTEM,
            version=version,
            reason="predictions drifted from the version's test split",
            details=summary,
        ),
    )
    callback = registry.model_settings(model).get("callback_url")
    if callback:
        body = {"model": name, "owner": owner, "version": version, "monitoring": report}
        WebhookEvents(context.redis, context.settings.job_ttl_s).send(
            DRIFT_EVENT, str(owner), callback, body
        )
    logger.info("drift detected", extra={"model": model, "version": version, **summary})
