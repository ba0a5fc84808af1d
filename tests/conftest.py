"""Fixtures that start the real services: redis-server, Celery workers and gunicorn.

Processes are started with the same command lines as the README's run command
(``imgq.local.commands``), each with ``IMGQ_*`` variables built from a test ``Settings``; the test
process's own environment is never modified.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from imgq.api_keys import Role, new_key
from imgq.local.supervisor import (
    REPO,
    Service,
    free_port,
    start_api,
    start_predict_worker,
    start_redis,
    start_train_worker,
    start_webhooks_worker,
    wait_until,
)
from imgq.settings import Settings

__all__ = ["REPO", "Service", "free_port", "wait_until"]

WEIGHTS_CACHE = REPO / "var" / "test-weights"
"""Converted weights shared across test runs (a cache only: tests pass when it is empty)."""


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


class Http:
    """``requests`` calls with an API key, thread-safe (no shared session).

    ``http.get(url)`` uses the admin key of the test session; ``http.as_client("alice")``
    returns the same helper for another configured client.
    """

    def __init__(self, key: str = "") -> None:
        self.key = key

    def as_client(self, client: str) -> Http:
        """The helper for one of the session's clients."""
        return Http(KEYS[client])

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send with ``Authorization: Bearer <key>`` and a default timeout."""
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, url, headers=headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """GET with the key."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """POST with the key."""
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        """DELETE with the key."""
        return self.request("DELETE", url, **kwargs)


KEYS: dict[str, str] = {}
"""Plain API keys of the session, by client name (``admin``, ``alice``, ``bob``)."""
SECRETS: dict[str, str] = {}
"""Webhook secrets of the session, by client name."""
http = Http()
"""Requests as the session's admin; the ``settings`` fixture fills in the key."""


def write_keys(path: Path) -> dict[str, str]:
    """A keys file with an admin and two clients; returns their plain keys."""
    plain, stored = {}, []
    for client, role in (("admin", Role.ADMIN), ("alice", Role.CLIENT), ("bob", Role.CLIENT)):
        plain[client], entry = new_key(client, role)
        SECRETS[client] = entry.webhook_secret
        stored.append(asdict(entry))
    path.write_text(json.dumps(stored))
    return plain


@pytest.fixture(scope="session")
def settings(redis_service: Service, service_dir: Path) -> Settings:
    """Settings every service of the session shares."""
    WEIGHTS_CACHE.mkdir(parents=True, exist_ok=True)
    KEYS.update(write_keys(service_dir / "api-keys.json"))
    http.key = KEYS["admin"]
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


def start_with_own_metrics(
    start: Callable[..., Service], settings: Settings, log_dir: Path, role: str
) -> Service:
    """Start a worker on its own metrics port (workers share the machine); ``.url`` serves it."""
    own_port = settings.model_copy(update={"metrics_port": free_port()})
    service = start(own_port, log_dir, name=f"{role}-{free_port()}")
    service.url = f"http://127.0.0.1:{own_port.metrics_port}"
    return service


@pytest.fixture(scope="session")
def api_server(settings: Settings, service_dir: Path) -> Iterator[str]:
    """A real gunicorn serving the API; yields its base URL."""
    service = start_api(settings, service_dir, free_port())
    yield service.url
    service.stop()


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    """Encode an RGB array as JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


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


def wait_for_job(base: str, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """Long-poll ``GET /jobs/<id>?wait=`` until the job ends; return its document."""
    document: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal document
        document = http.get(f"{base}/jobs/{job_id}", params={"wait": 5}, timeout=10).json()
        return document["status"] in ("succeeded", "failed", "canceled")

    wait_until(ended, timeout_s, f"job {job_id}")
    return document


def scrape(port: int) -> dict[str, float]:
    """Every sample of a worker's Prometheus endpoint, keyed ``name{label="value",...}``."""
    return scrape_url(f"http://127.0.0.1:{port}/metrics")


def scrape_url(url: str) -> dict[str, float]:
    """Every sample of a Prometheus endpoint, keyed ``name{label="value",...}``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples
