"""The Flask app factory: settings in, a configured app with blueprints and error handlers out."""

from __future__ import annotations

import time

from flask import Flask

from api import (
    console,
    datasets,
    docs,
    exports,
    feedback,
    finetune,
    health,
    identity,
    jobs,
    metrics,
    models,
    monitoring,
    oip,
    predict,
    rollout,
    tfserving,
)
from api.auth import BEARER_SCHEME, BEARER_SECURITY_SCHEME, install_auth
from api.errors import ImgqApi, register_error_handlers
from api.protocol_errors import install_protocol_errors
from api.quotas import install_rate_limit
from api.services import Services
from api.waiters import JobWaiters
from imgq.api_keys import ReloadingKeyRing
from imgq.jobs.idempotency import IdempotencyKeys
from imgq.jobs.store import JobStore
from imgq.queueing import make_celery
from imgq.redis_client import redis_client
from imgq.settings import Settings, load_settings
from imgq.webhooks.schedule import DeliveryStore
from ml.dataset_store import DatasetStore
from ml.registry import ModelRegistry, prepare_store

SOCKET_TIMEOUT_S = 2.0
"""Redis calls from a request give up after this long, so an outage answers 503 quickly."""


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API app; tests pass their own ``Settings`` instead of touching the environment."""
    settings = settings or load_settings()
    app = Flask("imgq")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,  # raised per view for dataset uploads
        API_TITLE="imgq",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={"security": [{BEARER_SCHEME: []}]},  # open operations say otherwise
        **docs.OPENAPI_DOCS_CONFIG,
    )
    client = redis_client(
        settings.redis_url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )
    celery = make_celery(settings)
    celery.conf.task_publish_retry_policy = {
        "max_retries": 2,
        "interval_start": 0.1,
        "interval_step": 0.2,
        "interval_max": 0.5,
    }
    registry = ModelRegistry(settings.model_store, settings.model_cache_dir)
    prepare_store(
        registry,
        legacy_namespace=settings.legacy_model_owner,
        backbone=settings.default_backbone,
        created_at=time.time(),
    )
    app.extensions["imgq"] = Services(
        settings=settings,
        redis=client,
        broker=redis_client(
            settings.celery_broker_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
        ),
        jobs=JobStore(client, settings.job_ttl_s),
        registry=registry,
        datasets=DatasetStore(settings.model_store),
        celery=celery,
        waiters=JobWaiters(client),
        idempotency=IdempotencyKeys(client, settings.job_ttl_s),
        deliveries=DeliveryStore(client, settings.job_ttl_s),
    )
    keys = ReloadingKeyRing(settings.api_keys, settings.api_keys_file)
    if not len(keys.current()):
        raise RuntimeError(
            "No API keys configured: set IMGQ_API_KEYS_FILE or IMGQ_API_KEYS "
            "(`make run` creates var/api-keys.json with an admin key on first start)."
        )
    install_auth(app, keys)
    install_rate_limit(app)
    rest_api = ImgqApi(app)
    rest_api.spec.components.security_scheme(BEARER_SCHEME, BEARER_SECURITY_SCHEME)
    # The whole route map: one blueprint per module, in the order the OpenAPI document lists them.
    for blueprint in (
        health.blp,
        identity.blp,
        predict.blp,
        finetune.blp,
        jobs.blp,
        feedback.blp,
        models.blp,
        monitoring.blp,
        rollout.blp,
        exports.blp,
        datasets.blp,
        oip.blp,  # inference protocols: synchronous views of predict jobs
        tfserving.blp,
    ):
        rest_api.register_blueprint(blueprint)
    app.register_blueprint(metrics.blp)  # plain Flask: not part of the OpenAPI document
    app.register_blueprint(docs.blp)  # Swagger UI's files for /docs, likewise
    app.register_blueprint(console.blp)  # the /console page and its files, likewise
    register_error_handlers(app)
    install_protocol_errors(app)  # their errors in the protocols' shape
    return app
