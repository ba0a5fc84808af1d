"""``imgq-dev``: run Redis, the API and the workers on this machine, in the foreground.

Like ``docker compose up``: every process's output goes to this terminal, Ctrl-C or SIGTERM
stops all of them (workers get a warm shutdown first), and if one of them dies the rest are
stopped too, so a broken local run never half-works silently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

import redis

from imgq.keys import create_key_file
from imgq.logs import configure_logging
from imgq.processes import (
    api_argv,
    flower_argv,
    predict_worker_argv,
    redis_argv,
    train_worker_argv,
    webhooks_worker_argv,
)
from imgq.settings import Settings, load_settings

STOP_GRACE_S = 30.0
"""How long processes get to finish in-flight work after SIGTERM before SIGKILL."""


def wait_for_redis(url: str, timeout_s: float) -> None:
    """Block until Redis answers PING, or raise TimeoutError."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis at {url} did not answer within {timeout_s}s") from None
            time.sleep(0.1)


def _terminate(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL whatever is still running after the grace period."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Stop the API and workers first (they finish in-flight work against Redis), Redis last."""
    _terminate([child for name, child in children.items() if name != "redis"])
    _terminate([child for name, child in children.items() if name == "redis"])


def train_metrics_port(settings: Settings) -> int:
    """Each worker on one machine needs its own metrics port: the training worker takes the next."""
    return settings.metrics_port + 1 if settings.metrics_port else 0


def start_service(settings: Settings) -> dict[str, subprocess.Popen[bytes]]:
    """Start Redis, wait for it, then the API and both workers."""
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    children = {"redis": subprocess.Popen(redis_argv(settings, settings.redis_dir))}
    wait_for_redis(settings.redis_url, timeout_s=20)
    children["api"] = subprocess.Popen(api_argv(settings))
    children["predict-worker"] = subprocess.Popen(predict_worker_argv(settings))
    train_env = {**os.environ, "IMGQ_METRICS_PORT": str(train_metrics_port(settings))}
    children["train-worker"] = subprocess.Popen(train_worker_argv(settings), env=train_env)
    webhooks_port = settings.metrics_port + 2 if settings.metrics_port else 0
    webhooks_env = {**os.environ, "IMGQ_METRICS_PORT": str(webhooks_port)}
    children["webhooks-worker"] = subprocess.Popen(webhooks_worker_argv(settings), env=webhooks_env)
    if settings.flower_port:
        children["flower"] = subprocess.Popen(flower_argv(settings))
    return children


def main() -> int:
    """Run until interrupted; the exit code is non-zero if a process died on its own."""
    settings = load_settings()
    configure_logging(settings.log_level)
    stopping = False

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    new_admin_key = create_key_file(settings.api_keys_file) if settings.api_keys_file else None
    children = start_service(settings)
    flower = f", Flower on http://127.0.0.1:{settings.flower_port}" if settings.flower_port else ""
    print(
        f"imgq is up: API on http://{settings.api_bind} (try GET /healthz, POST /jobs/predict), "
        f"Redis at {settings.redis_url}, worker metrics on :{settings.metrics_port} and "
        f":{train_metrics_port(settings)}{flower}, data under {settings.redis_dir.parent}/. "
        "Ctrl-C stops everything.",
        flush=True,
    )
    if new_admin_key and settings.api_keys_file:
        print(
            f"Created an admin API key (saved in {settings.api_keys_file.with_suffix('.admin-key')}"
            f"; only its hash is in {settings.api_keys_file}). Use it as:\n"
            f"  curl -H 'Authorization: Bearer {new_admin_key}' -F image=@cat.jpg "
            f"http://{settings.api_bind}/jobs/predict",
            flush=True,
        )
    exit_code = 0
    parent = os.getppid()
    while not stopping:
        dead = [name for name, child in children.items() if child.poll() is not None]
        if dead:
            print(f"imgq: {', '.join(dead)} exited; stopping the rest.", file=sys.stderr)
            exit_code = 1
            break
        if os.getppid() != parent:
            # `make run` got SIGTERM: make exits without passing it on, so follow it.
            print("imgq: the launching process exited; stopping.", file=sys.stderr)
            break
        time.sleep(0.5)
    stop_all(children)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
