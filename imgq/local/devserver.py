"""``imgq-dev``: run Redis, the API and the workers on this machine, in the foreground.

Like ``docker compose up``: every process's output goes to this terminal, Ctrl-C or SIGTERM
stops all of them (workers get a warm shutdown first), and if one of them dies the rest are
stopped too, so a broken local run never half-works silently. The processes are started and
stopped by ``imgq.local.supervisor``, the same code the tests use.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from imgq.api_keys import create_key_file
from imgq.local.supervisor import LocalStack, worker_metrics_port
from imgq.logs import configure_logging
from imgq.queueing import WorkerKind
from imgq.settings import Settings, load_settings

POLL_S = 0.5
"""How often the supervisor looks at its children (and, until it is up, at readiness)."""


def _announce_key(settings: Settings, new_admin_key: str | None) -> None:
    if new_admin_key and settings.api_keys_file:
        print(
            f"Created an admin API key (saved in {settings.api_keys_file.with_suffix('.admin-key')}"
            f"; only its hash is in {settings.api_keys_file}). Use it as:\n"
            f"  curl -H 'Authorization: Bearer {new_admin_key}' -F image=@cat.jpg "
            f"http://{settings.api_bind}/jobs/predict",
            flush=True,
        )


def _announce_up(settings: Settings) -> None:
    ports = " and ".join(f":{worker_metrics_port(settings, kind)}" for kind in WorkerKind)
    flower = f", Flower on http://127.0.0.1:{settings.flower_port}" if settings.flower_port else ""
    print(
        f"imgq is up: API on http://{settings.api_bind} (try GET /healthz, POST /jobs/predict), "
        f"Redis at {settings.redis_url}, worker metrics on {ports}{flower}, "
        f"data under {settings.redis_dir.parent}/. Ctrl-C stops everything.",
        flush=True,
    )


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
    stack = LocalStack(settings)
    _announce_key(settings, new_admin_key)
    exit_code, up, parent = 0, False, os.getppid()
    while not stopping:
        dead = stack.dead()
        if dead:
            print(f"imgq: {', '.join(dead)} exited; stopping the rest.", file=sys.stderr)
            exit_code = 1
            break
        if os.getppid() != parent:
            # `make run` got SIGTERM: make exits without passing it on, so follow it.
            print("imgq: the launching process exited; stopping.", file=sys.stderr)
            break
        if not up and stack.ready():
            up = True
            _announce_up(settings)
        time.sleep(POLL_S)
    stack.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
