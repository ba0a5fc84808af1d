"""``/metrics`` of the API: requests and jobs it saw, plus the depth of every queue.

Under gunicorn the counters live in per-process files (see ``api.gunicorn_conf``) and are
summed at scrape time. Queue depth is read from Redis at scrape time rather than kept in a
gauge, so it is right whichever process answers: ``imgq_queue_depth`` is what waits in each
list (what KEDA sees), ``imgq_queue_unacked`` what workers hold without having acknowledged
(prefetched or running), which KEDA cannot see. Two counters kept in Redis by every worker show
at-least-once delivery at work: results computed twice and discarded, and lost images resent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import redis
from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.services import services
from imgq.monitoring import MonitorLog
from imgq.queueing import PREDICT_QUEUE, TRAIN_QUEUE, WEBHOOKS_QUEUE
from imgq.redis_keys import KOMBU_UNACKED, REDUNDANT_RESULTS, RESENT_IMAGES
from ml.registry import split_model_id

JOBS_SUBMITTED = Counter("imgq_jobs_submitted_total", "Jobs accepted (202).", ["type"])
REQUESTS_REJECTED = Counter(
    "imgq_requests_rejected_total",
    "Error responses by status and error code.",
    ["status", "code"],
)

blp = Blueprint("metrics", __name__)


class QueueDepthCollector(Collector):
    """Reads queue lengths from the broker when scraped."""

    def __init__(self, broker: redis.Redis) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        """One sample per queue; nothing when the broker is unreachable."""
        depth = GaugeMetricFamily(
            "imgq_queue_depth", "Messages waiting in each queue.", labels=["queue"]
        )
        unacked = GaugeMetricFamily(
            "imgq_queue_unacked", "Messages taken by workers and not yet acknowledged."
        )
        try:
            pipe = self._broker.pipeline(transaction=False)
            for queue in (PREDICT_QUEUE, TRAIN_QUEUE, WEBHOOKS_QUEUE):
                pipe.llen(queue)
            pipe.hlen(KOMBU_UNACKED)
            pipe.mget([REDUNDANT_RESULTS, RESENT_IMAGES])
            *lengths, held, (redundant, resent) = pipe.execute()
        except redis.RedisError:
            return
        for queue, length in zip(
            (PREDICT_QUEUE, TRAIN_QUEUE, WEBHOOKS_QUEUE), lengths, strict=True
        ):
            depth.add_metric([queue], length)
        unacked.add_metric([], held)
        yield depth
        yield unacked
        yield CounterMetricFamily(
            "imgq_redundant_results",
            "Image results computed again after a redelivery and discarded (never stored).",
            value=int(redundant or 0),
        )
        yield CounterMetricFamily(
            "imgq_resent_images",
            "Images the reaper sent again because their message was lost.",
            value=int(resent or 0),
        )


class MonitoringCollector(Collector):
    """Feedback, online accuracy and drift of every monitored version, read from Redis when
    scraped (the drift figures are those of the latest periodic check, ``workers.drift_check``)."""

    def __init__(self, log: MonitorLog) -> None:
        self._log = log

    def collect(self) -> Iterator[Metric]:
        """Samples per ``(owner, model, version)``; nothing when Redis is unreachable."""
        labels = ["owner", "model", "version"]
        feedback = CounterMetricFamily(
            "imgq_feedback_total",
            "Images that received a true label (the first one each), by outcome.",
            labels=[*labels, "outcome"],
        )
        accuracy = GaugeMetricFamily(
            "imgq_online_accuracy",
            "Accuracy of the drift-check window's predictions that received feedback.",
            labels=labels,
        )
        p_values = GaugeMetricFamily(
            "imgq_drift_p_value",
            "p-value of each drift test (classes: chi-square, confidence: Kolmogorov-Smirnov).",
            labels=[*labels, "test"],
        )
        detected = GaugeMetricFamily(
            "imgq_drift_detected", "1 while the version's predictions have drifted.", labels=labels
        )
        try:
            for model, version in self._log.versions():
                owner, name = split_model_id(model)
                values = [str(owner), name, str(version)]
                for outcome, count in self._log.feedback_totals(model, version).items():
                    feedback.add_metric([*values, outcome], count)
                report = self._log.report(model, version)
                if report is None:
                    continue
                if report["feedback"]["accuracy"] is not None:
                    accuracy.add_metric(values, report["feedback"]["accuracy"])
                for test in ("classes", "confidence"):
                    if report[test]["p_value"] is not None:
                        p_values.add_metric([*values, test], report[test]["p_value"])
                if report["drifted"] is not None:
                    detected.add_metric(values, float(report["drifted"]))
        except redis.RedisError:
            return
        yield from (feedback, accuracy, p_values, detected)


@blp.route("/metrics")
def metrics() -> Response:
    """Prometheus text format: counters summed over gunicorn's processes, then queue depths."""
    counters = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
    queues = CollectorRegistry()
    queues.register(QueueDepthCollector(services().broker))
    queues.register(
        MonitoringCollector(MonitorLog(services().redis, services().settings.job_ttl_s))
    )
    body = generate_latest(counters) + generate_latest(queues)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
