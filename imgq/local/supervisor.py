"""Start imgq's processes on this machine, tell when each one serves, and stop them in order.

The one supervisor of the local run (``imgq-dev``, what ``make run`` starts), the test
fixtures, the benchmarks and the fault tests: all of them run exactly the command lines of
``imgq.local.commands`` and wait on the same readiness signals: Redis answers PING, gunicorn
answers ``/healthz``, a worker answers a Celery ping (which a prediction worker only does once
its model is loaded). Stopping is always workers and API first (they finish in-flight work
against Redis), Redis last, each with SIGTERM and then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import redis
from celery.app.control import Control

from imgq.local.commands import (
    api_argv,
    flower_argv,
    redis_argv,
    settings_env,
    worker_argv,
)
from imgq.queueing import WorkerKind, make_celery
from imgq.settings import Settings

REPO = Path(__file__).resolve().parent.parent.parent
STOP_GRACE_S = 30.0
"""How long processes get to finish in-flight work after SIGTERM before SIGKILL."""


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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds one process has used so far (from ``/proc``; 0 once gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and its live descendants: what a whole service costs."""
    return sum(process_cpu_seconds(pid) for pid in process_tree(root))


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


def worker_metrics_port(settings: Settings, kind: WorkerKind) -> int:
    """Workers on one machine need their own metrics ports: ``IMGQ_METRICS_PORT`` for the
    prediction worker, the next two for the training and webhooks workers (0 keeps all off)."""
    if not settings.metrics_port:
        return 0
    return settings.metrics_port + list(WorkerKind).index(kind)


class Service:
    """A started process, with its output in a log file (``log_dir``) or on this terminal."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_dir: Path | None,
        *,
        url: str = "",
        node: str = "",
    ) -> None:
        self.name = name
        self.url = url
        self.node = node
        self.log_path = log_dir / f"{name}.log" if log_dir is not None else None
        self._log: IO[bytes] | None = self.log_path.open("ab") if self.log_path else None
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
        )

    def log(self) -> str:
        """Everything the process printed so far (empty when it prints to the terminal)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def close_log(self) -> None:
        """Close the log file once the process has ended."""
        if self._log is not None:
            self._log.close()

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def stop(self, timeout_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (a warm shutdown for workers), then SIGKILL if it will not go."""
        stop_all([self], timeout_s)


def stop_all(services: Iterable[Service], timeout_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every service at once, then SIGKILL whatever is left after ``timeout_s``."""
    services = list(services)
    for service in services:
        if service.alive():
            service.process.terminate()
    deadline = time.monotonic() + timeout_s
    for service in services:
        try:
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()
        service.close_log()


def launch_redis(settings: Settings, data_dir: Path, log_dir: Path | None) -> Service:
    """redis-server on ``settings.redis_url`` with AOF in ``data_dir`` (not waited for)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return Service(
        "redis", redis_argv(settings, data_dir), dict(os.environ), log_dir, url=settings.redis_url
    )


def redis_answers(url: str) -> bool:
    """Whether Redis at ``url`` answers PING."""
    return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())


def start_redis(settings: Settings, data_dir: Path, log_dir: Path | None) -> Service:
    """redis-server with AOF in ``data_dir``; returns once it answers."""
    service = launch_redis(settings, data_dir, log_dir)
    wait_until(lambda: redis_answers(settings.redis_url), 20, "redis-server")
    return service


def launch_api(settings: Settings, log_dir: Path | None, bind: str | None = None) -> Service:
    """Gunicorn on ``bind`` (default ``IMGQ_API_BIND``), not waited for."""
    bind = bind or settings.api_bind
    return Service(
        "api", api_argv(settings, bind=bind), child_env(settings), log_dir, url=f"http://{bind}"
    )


def api_answers(service: Service) -> bool:
    """Whether the API's ``/healthz`` answers 200."""
    with urllib.request.urlopen(f"{service.url}/healthz", timeout=1) as response:  # noqa: S310
        return bool(response.status == 200)


def start_api(settings: Settings, log_dir: Path | None, port: int) -> Service:
    """Gunicorn on 127.0.0.1:``port``; returns once ``/healthz`` answers."""
    service = launch_api(settings, log_dir, f"127.0.0.1:{port}")
    wait_until(lambda: api_answers(service), 60, "gunicorn")
    return service


def launch_worker(
    settings: Settings, log_dir: Path | None, kind: WorkerKind, name: str | None = None
) -> Service:
    """A worker of ``kind`` named ``name`` (default: the kind), not waited for."""
    name = name or kind.value
    argv = worker_argv(settings, kind, name)
    return Service(name, argv, child_env(settings), log_dir, node=f"{name}@{socket.gethostname()}")


def worker_answers(control: Control, service: Service) -> bool:
    """Whether the worker answers a Celery ping (raises if it has exited)."""
    if not service.alive():
        raise RuntimeError(f"worker {service.name} exited:\n{service.log()[-4000:]}")
    return bool(control.ping(destination=[service.node], timeout=0.5))


def start_worker(
    settings: Settings,
    log_dir: Path | None,
    kind: WorkerKind,
    name: str | None = None,
    timeout_s: float = 60,
) -> Service:
    """A worker of ``kind``; returns once it answers a ping."""
    service = launch_worker(settings, log_dir, kind, name)
    control = make_celery(settings).control  # one broker connection for all the pings
    wait_until(lambda: worker_answers(control, service), timeout_s, f"worker {service.name}")
    return service


def start_predict_worker(
    settings: Settings, log_dir: Path | None, name: str = "predict", timeout_s: float = 180
) -> Service:
    """A prediction worker; returns once it answers a ping, i.e. its model is loaded and warm."""
    return start_worker(settings, log_dir, WorkerKind.PREDICT, name, timeout_s)


def start_webhooks_worker(
    settings: Settings, log_dir: Path | None, name: str = "webhooks", timeout_s: float = 60
) -> Service:
    """A webhooks worker (deliveries, their scheduler, the reaper); returns once it answers."""
    return start_worker(settings, log_dir, WorkerKind.WEBHOOKS, name, timeout_s)


def start_train_worker(
    settings: Settings, log_dir: Path | None, name: str = "train", timeout_s: float = 60
) -> Service:
    """A training worker; returns once it answers a ping."""
    return start_worker(settings, log_dir, WorkerKind.TRAIN, name, timeout_s)


class LocalStack:
    """Everything ``make run`` starts: Redis, the API, one worker of each kind, maybe Flower."""

    def __init__(self, settings: Settings, log_dir: Path | None = None) -> None:
        self._control = make_celery(settings).control
        self.redis = start_redis(settings, settings.redis_dir, log_dir)
        self.api = launch_api(settings, log_dir)
        self.workers = [
            launch_worker(
                settings.model_copy(update={"metrics_port": worker_metrics_port(settings, kind)}),
                log_dir,
                kind,
            )
            for kind in WorkerKind
        ]
        self.flower = (
            Service("flower", flower_argv(settings), child_env(settings), log_dir)
            if settings.flower_port
            else None
        )

    @property
    def services(self) -> list[Service]:
        """Every process, Redis first."""
        extra = [self.flower] if self.flower else []
        return [self.redis, self.api, *self.workers, *extra]

    def dead(self) -> list[str]:
        """Names of the processes that have exited."""
        return [service.name for service in self.services if not service.alive()]

    def ready(self) -> bool:
        """Whether the API answers and every worker answers a ping (never blocks for long)."""
        try:
            return api_answers(self.api) and all(
                worker_answers(self._control, worker) for worker in self.workers
            )
        except (OSError, RuntimeError, redis.RedisError):
            return False

    def stop(self) -> None:
        """Workers, API and Flower first (they finish in-flight work), Redis last."""
        stop_all([service for service in self.services if service is not self.redis])
        stop_all([self.redis])
