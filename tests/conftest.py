"""Fixtures that start the real services: redis-server, Celery workers and gunicorn.

Processes are started with the same command lines as the README's run command
(``imgq.local.commands``), each with ``IMGQ_*`` variables built from a test ``Settings``; the test
process's own environment is never modified. The helpers tests share live in ``tests.support``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from imgq.local.supervisor import (
    Service,
    free_port,
    start_api,
    start_predict_worker,
    start_redis,
    start_train_worker,
    start_webhooks_worker,
)
from imgq.settings import Settings
from tests.support.http import credentials
from tests.support.images import jpeg_bytes
from tests.support.services import WEIGHTS_CACHE, start_with_own_metrics


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scratch space of the session's services (logs, Redis data, model store)."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_service(service_dir: Path) -> Iterator[Service]:
    """A real redis-server with AOF on a free port."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run scripts/setup.sh (make test does)")
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    service = start_redis(settings, service_dir / "redis", service_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def settings(redis_service: Service, service_dir: Path) -> Settings:
    """Settings every service of the session shares; makes the session's API keys."""
    WEIGHTS_CACHE.mkdir(parents=True, exist_ok=True)
    credentials.write_keys_file(service_dir / "api-keys.json")
    return Settings(
        api_keys_file=service_dir / "api-keys.json",
        upload_dir=service_dir / "uploads",
        webhook_allow_private=True,  # the test receiver listens on 127.0.0.1
        webhook_retry_schedule_s="0,0.3,0.3",
        redis_url=redis_service.url,
        model_store=service_dir / "models",
        weights_dir=WEIGHTS_CACHE,
        redis_dir=service_dir / "redis",
        max_batch_delay_ms=20,
        api_workers=1,
        api_threads=8,
        metrics_port=free_port(),
        ready_file=service_dir / "predict-ready",
        # The suite's clients are not the ones being bounded: tests of quotas start an API of
        # their own with the defaults (tests/test_quotas.py).
        quota_jobs=100_000,
        quota_queued_images=100_000,
        quota_queued_image_bytes=1 << 40,
        quota_long_jobs=100,
        quota_explain_jobs=100,
        quota_rate_per_s=100_000.0,
        quota_burst=100_000,
        drift_check_interval_s=2,  # the drift webhook fires within seconds in tests
        rollout_check_interval_s=2,  # rollout policies act within seconds in tests
    )


@pytest.fixture
def redis_client(settings: Settings) -> redis.Redis:
    """A client of the session's Redis."""
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture(scope="session")
def predict_worker(settings: Settings, service_dir: Path) -> Iterator[Service]:
    """A real prediction worker process, returned once its model is loaded and it consumes."""
    service = start_predict_worker(settings, service_dir, name=f"predict-{free_port()}")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def train_worker(settings: Settings, service_dir: Path) -> Iterator[Service]:
    """A real training worker process (prefork); ``.url`` is its metrics endpoint's base."""
    service = start_with_own_metrics(start_train_worker, settings, service_dir, "train")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def webhooks_worker(settings: Settings, service_dir: Path) -> Iterator[Service]:
    """A real webhooks worker (deliveries, retry scheduler, reaper); ``.url`` as above."""
    service = start_with_own_metrics(start_webhooks_worker, settings, service_dir, "webhooks")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def api_server(settings: Settings, service_dir: Path) -> Iterator[str]:
    """A real gunicorn serving the API; yields its base URL."""
    service = start_api(settings, service_dir, free_port())
    yield service.url
    service.stop()


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    """scikit-image's chelsea (a tabby cat) as JPEG."""
    from skimage import data

    return jpeg_bytes(data.chelsea())


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    """scikit-image's coffee cup as JPEG."""
    from skimage import data

    return jpeg_bytes(data.coffee())
