"""Start imgq's processes on this machine and wait until each one serves.

Shared by the test fixtures, the benchmarks and the fault tests, so all of them run exactly
the command lines of the README's run command (``imgq.processes``) and wait on the same
readiness signals: Redis answers PING, gunicorn answers ``/healthz``, a worker answers a
Celery ping (which it only does once its model is loaded).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from imgq.envvars import settings_env
from imgq.processes import (
    api_argv,
    predict_worker_argv,
    redis_argv,
    train_worker_argv,
    webhooks_worker_argv,
)
from imgq.queueing import make_celery
from imgq.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (from ``/proc``): to kill or measure a whole service."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it is true; connection errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a service process: this one's, plus ``settings`` as ``IMGQ_*``."""
    return {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1", **extra}


class Service:
    """A started process whose output goes to a log file (read it when something fails)."""

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
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a warm shutdown for workers), then SIGKILL if it will not go."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_redis(settings: Settings, data_dir: Path, log_dir: Path) -> Service:
    """redis-server on ``settings.redis_url`` with AOF in ``data_dir``; returns once it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    service = Service(
        "redis", redis_argv(settings, data_dir), dict(os.environ), log_dir, url=settings.redis_url
    )
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5)
    wait_until(lambda: bool(client.ping()), 20, "redis-server")
    return service


def start_api(settings: Settings, log_dir: Path, port: int) -> Service:
    """Gunicorn on 127.0.0.1:``port``; returns once ``/healthz`` answers."""
    base = f"http://127.0.0.1:{port}"
    service = Service(
        "api", api_argv(settings, bind=f"127.0.0.1:{port}"), child_env(settings), log_dir, url=base
    )

    def healthy() -> bool:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:  # noqa: S310
            return bool(response.status == 200)

    wait_until(healthy, 60, "gunicorn")
    return service


def _start_worker(
    settings: Settings, log_dir: Path, name: str, argv: list[str], timeout_s: float
) -> Service:
    node = f"{name}@{socket.gethostname()}"
    service = Service(name, argv, child_env(settings), log_dir, node=node)
    control = make_celery(settings).control

    def answers() -> bool:
        if service.process.poll() is not None:
            raise RuntimeError(f"worker {name} exited:\n{service.log()[-4000:]}")
        return bool(control.ping(destination=[node], timeout=0.5))

    wait_until(answers, timeout_s, f"worker {name}")
    return service


def start_predict_worker(
    settings: Settings, log_dir: Path, name: str = "predict", timeout_s: float = 180
) -> Service:
    """A prediction worker; returns once it answers a ping, i.e. its model is loaded and warm."""
    return _start_worker(settings, log_dir, name, predict_worker_argv(settings, name), timeout_s)


def start_webhooks_worker(
    settings: Settings, log_dir: Path, name: str = "webhooks", timeout_s: float = 60
) -> Service:
    """A webhooks worker (deliveries and their retry scheduler); returns once it answers."""
    return _start_worker(settings, log_dir, name, webhooks_worker_argv(settings, name), timeout_s)


def start_train_worker(
    settings: Settings, log_dir: Path, name: str = "train", timeout_s: float = 60
) -> Service:
    """A training worker; returns once it answers a ping."""
    return _start_worker(settings, log_dir, name, train_worker_argv(settings, name), timeout_s)
