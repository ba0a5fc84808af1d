"""The README's run command: brings up Redis, the API and both workers, and stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from imgq.local.commands import settings_env
from imgq.local.supervisor import REPO, free_port, wait_until
from imgq.settings import Settings
from tests.support.services import WEIGHTS_CACHE

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    found = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [int(child) for child in found]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _local_settings(tmp_path: Path, port: int) -> Settings:
    return Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        api_bind=f"127.0.0.1:{port}",
        model_store=tmp_path / "models",
        redis_dir=tmp_path / "redis",
        weights_dir=WEIGHTS_CACHE,
        api_workers=1,
        metrics_port=free_port(),
        ready_file=tmp_path / "ready",
        api_keys_file=tmp_path / "api-keys.json",
    )


def test_run_command_serves_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **settings_env(_local_settings(tmp_path, port))}
    process = subprocess.Popen(
        [sys.executable, "-m", "imgq.local.devserver"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 60, "the API")
        children = _children(process.pid)
        assert len(children) == 5  # redis, gunicorn, prediction, training and webhooks workers
        assert (tmp_path / "redis" / "appendonlydir").is_dir()  # AOF persistence is on
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output[-3000:]
    assert f"http://127.0.0.1:{port}" in output
    admin_key = (tmp_path / "api-keys.admin-key").read_text().strip()
    assert f"Bearer {admin_key}" in output  # the first start created and printed an admin key
    assert admin_key not in (tmp_path / "api-keys.json").read_text()  # only its hash is stored
    assert not [pid for pid in children if _alive(pid)]


def test_run_command_follows_its_launcher_when_that_is_killed(tmp_path: Path) -> None:
    """``make run`` does not pass SIGTERM on to its child: the service must stop anyway."""
    port = free_port()
    env = {**os.environ, **settings_env(_local_settings(tmp_path, port))}
    launcher = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m imgq.local.devserver; true"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 60, "the API")
    (devserver,) = _children(launcher.pid)
    started = [devserver, *_children(devserver)]
    launcher.kill()
    launcher.wait()
    wait_until(lambda: not [pid for pid in started if _alive(pid)], 90, "everything to stop")
