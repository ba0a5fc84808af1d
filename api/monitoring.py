"""``GET /models/<name>/versions/<v>/monitoring``: drift and online accuracy of a version.

The window is read from Redis (``imgq.monitoring``), the reference from the version on the
store, and the tests run here, on demand (``ml.drift``): a window of 1000 takes a few
milliseconds. The webhooks workers run the same report every ``IMGQ_DRIFT_CHECK_INTERVAL_S``
for ``/metrics`` and the ``model.drift_detected`` webhook (``workers.drift_check``).
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from api.model_access import OWNER_PARAMETER, owned_model, version_of
from api.monitoring_schemas import MonitoringQuerySchema, MonitoringSchema
from api.schemas import ErrorEnvelopeSchema
from api.services import services
from imgq.monitoring import MonitorLog
from ml.canary import canary_block
from ml.drift import DriftRule, version_monitoring

blp = Blueprint("monitoring", __name__, url_prefix="/models", description="Model monitoring")


@blp.route("/<string:name>/versions/<int:version>/monitoring", parameters=[OWNER_PARAMETER])
@blp.arguments(MonitoringQuerySchema, location="query")
@blp.response(200, MonitoringSchema)
@blp.alt_response(403, schema=ErrorEnvelopeSchema)
@blp.alt_response(404, schema=ErrorEnvelopeSchema)
def get_monitoring(query: dict[str, Any], name: str, version: int) -> dict[str, Any]:
    """Drift of a version's newest predictions from its test split, and its online accuracy
    from feedback (the model's owner or an admin)."""
    svc = services()
    model = owned_model(name)
    version_of(model, version)
    window = min(query["window"], svc.settings.monitor_window)
    log = MonitorLog(svc.redis, svc.settings.job_ttl_s)
    entries = log.window(model, version, window)
    rule = DriftRule(svc.settings.drift_alpha, svc.settings.drift_min_predictions)
    document = version_monitoring(
        svc.registry,
        model,
        version,
        [(entry.label, entry.confidence, entry.truth) for entry in entries],
        window=window,
        rule=rule,
        builtin_reference=svc.settings.builtin_reference_file,
    )
    canary = canary_block(
        svc.registry,
        model,
        lambda number: [
            e.as_labelled() for e in log.window(model, number, svc.settings.monitor_window)
        ],
        rule=rule,
        builtin_reference=svc.settings.builtin_reference_file,
    )
    if canary is not None and version in (canary["version"], canary["active_version"]):
        document["canary"] = canary
    return document
