"""``docker/compose.yaml`` run by podman-compose, with a test override beside it.

The compose file is used as it is; ``compose.override.yaml`` (written into a scratch directory
per run) changes only what a machine without a registry, or a test, needs: the Redis image (the
stand-in), the API's published port (a free one on 127.0.0.1 instead of 8000), the session's
keys file mounted read-only into the API and the webhooks worker, callbacks to this host
allowed, and a short visibility timeout so that messages of a killed worker come back in
seconds. Podman 4.3 has no ``podman wait --condition=healthy``, so podman-compose starts the
imgq containers without waiting for Redis's healthcheck; they retry until Redis answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from imgq.local.supervisor import free_port
from tests.containers.podman import REDIS_IMAGE, REPO, Podman, PodmanError
from tests.containers.smoke import Stack

COMPOSE_FILE = REPO / "docker" / "compose.yaml"
KEYS_IN_CONTAINER = "/etc/imgq/keys"
IMGQ_SERVICES = ["api", "predict-worker", "train-worker", "webhooks-worker"]
SMOKE_SETTINGS = {
    "IMGQ_API_KEYS_FILE": f"{KEYS_IN_CONTAINER}/api-keys.json",
    "IMGQ_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver listens on this host's bridge address
    "IMGQ_WEBHOOK_RETRY_SCHEDULE_S": "0,1,1",
    "IMGQ_UNACKED_RESTORE_INTERVAL_S": "1",
    "IMGQ_MAX_BATCH_DELAY_MS": "20",
}
"""Settings of the smoke run on top of compose's."""
VISIBILITY_TIMEOUT_S = 8
"""Compose's ``IMGQ_VISIBILITY_TIMEOUT_S`` for the run: a killed worker's messages come back
after this (production's 60 s scaled down)."""


def podman_compose() -> str:
    """The podman-compose of this interpreter's environment (or the PATH's)."""
    local = Path(sys.executable).parent / "podman-compose"
    return str(local) if local.exists() else shutil.which("podman-compose") or "podman-compose"


def override_yaml(keys_dir: Path, api_port: int) -> str:
    """The override file's text (``!override`` replaces compose's ``8000:8000``; other lists
    and maps merge into compose's)."""
    environment = "".join(
        f"      {key}: {json.dumps(value)}\n" for key, value in SMOKE_SETTINGS.items()
    )
    keys = f"      - {keys_dir}:{KEYS_IN_CONTAINER}:ro\n"
    return (
        "services:\n"
        f"  redis:\n    image: {REDIS_IMAGE}\n"
        "  api:\n"
        f'    ports: !override\n      - "127.0.0.1:{api_port}:8000"\n'
        f"    environment:\n{environment}"
        f"    volumes:\n{keys}"
        "  webhooks-worker:\n"
        f"    environment:\n{environment}"
        f"    volumes:\n{keys}"
        + "".join(
            f"  {service}:\n    environment:\n{environment}"
            for service in ("predict-worker", "train-worker")
        )
    )


class ComposeStack(Stack):
    """The compose project ``name``: ``up`` starts it, ``down`` removes it and its volumes."""

    kind = "compose"

    def __init__(self, podman: Podman, directory: Path, keys_dir: Path, name: str) -> None:
        super().__init__(podman)
        self.directory = directory
        self.name = name
        self.api_port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.override = directory / "compose.override.yaml"
        self.override.write_text(override_yaml(keys_dir, self.api_port))

    def compose(self, *args: str, timeout: float = 300) -> str:
        """``podman-compose -p NAME -f compose.yaml -f override ARGS``; its output."""
        argv = [
            podman_compose(),
            "-p",
            self.name,
            "-f",
            str(COMPOSE_FILE),
            "-f",
            str(self.override),
        ]
        env = {**self.podman.env, "IMGQ_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)}
        result = subprocess.run(
            [*argv, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        with (self.directory / "compose.log").open("a") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise PodmanError(f"podman-compose {' '.join(args)}: {result.stderr[-4000:]}")
        return result.stdout

    def up(self) -> None:
        """Start Redis and the four imgq services from the built image (no build, no pull)."""
        self.compose("up", "-d", "--no-build", *["redis", *IMGQ_SERVICES])
        self.api = f"http://127.0.0.1:{self.api_port}"
        for service in ["redis", *IMGQ_SERVICES]:
            self.containers[service] = self._container_of(service)
        self.network = f"{self.name}_default"

    def _container_of(self, service: str) -> str:
        listed = self.podman.run(
            "ps", "-a", "--format", "json",
            "--filter", f"label=io.podman.compose.project={self.name}",
            "--filter", f"label=io.podman.compose.service={service}",
        )  # fmt: skip
        (container,) = json.loads(listed.stdout)
        return str(container["Names"][0])

    def down(self) -> None:
        """Remove the project's containers, network and volumes."""
        try:
            self.compose("down", "-v", "-t", "2", timeout=180)
        finally:
            # podman-compose's pod carries no project label.
            self.podman.run("pod", "rm", "-f", "--ignore", f"pod_{self.name}", check=False)
            self.podman.remove_leftovers(f"io.podman.compose.project={self.name}")
