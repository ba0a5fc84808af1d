"""Fixtures that start the real services: redis-server, Celery workers and gunicorn.

Processes are started with the same command lines as the README's run command
(``imgq.processes``), each with ``IMGQ_*`` variables built from a test ``Settings``; the test
process's own environment is never modified.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from imgq.envvars import settings_env
from imgq.processes import api_argv, predict_worker_argv, redis_argv
from imgq.queueing import make_celery
from imgq.settings import Settings

REPO = Path(__file__).resolve().parent.parent
WEIGHTS_CACHE = REPO / "var" / "test-weights"
"""Converted weights shared across test runs (a cache only: tests pass when it is empty)."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it is true, or fail the test with ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, requests.RequestException, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def child_env(settings: Settings) -> dict[str, str]:
    """Environment of a service process: ours plus the test settings."""
    return {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}


class Service:
    """A started process whose output goes to a log file that failing tests can print."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        url: str = "",
        node: str = "",
    ) -> None:
        self.name = name
        self.url = url
        self.node = node
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it will not go."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scratch space of the session's services (logs, Redis data, model store)."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_service(service_dir: Path) -> Iterator[Service]:
    """A real redis-server with AOF on a free port."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run scripts/setup.sh (make test does)")
    port = free_port()
    data = service_dir / "redis"
    data.mkdir()
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0")
    service = Service(
        "redis", redis_argv(settings, data), dict(os.environ), service_dir, url=settings.redis_url
    )
    wait_until(lambda: redis.Redis(port=port).ping(), 20, "redis-server")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def settings(redis_service: Service, service_dir: Path) -> Settings:
    """Settings every service of the session shares."""
    WEIGHTS_CACHE.mkdir(parents=True, exist_ok=True)
    return Settings(
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
    name = f"predict-{free_port()}"
    node = f"{name}@{socket.gethostname()}"
    service = Service(
        "predict-worker",
        predict_worker_argv(settings, name),
        child_env(settings),
        service_dir,
        node=node,
    )
    control = make_celery(settings).control

    def answers() -> bool:
        if service.process.poll() is not None:
            raise AssertionError(f"worker exited:\n{service.log()[-4000:]}")
        return bool(control.ping(destination=[node], timeout=0.5))

    wait_until(answers, 180, "the prediction worker to load its model")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def api_server(settings: Settings, service_dir: Path) -> Iterator[str]:
    """A real gunicorn serving the API; yields its base URL."""
    port = free_port()
    service = Service(
        "api", api_argv(settings, bind=f"127.0.0.1:{port}"), child_env(settings), service_dir
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{base}/healthz", timeout=1).ok, 60, "gunicorn")
    yield base
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
        document = requests.get(f"{base}/jobs/{job_id}", params={"wait": 5}, timeout=10).json()
        return document["status"] in ("succeeded", "failed")

    wait_until(ended, timeout_s, f"job {job_id}")
    return document


def scrape(port: int) -> dict[str, float]:
    """Every sample of a Prometheus endpoint, keyed ``name{label="value",...}``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples
