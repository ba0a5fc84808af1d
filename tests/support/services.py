"""Where the session's services keep what outlives a run, and starting a worker beside others."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imgq.local.supervisor import REPO, Service, free_port
from imgq.settings import Settings

WEIGHTS_CACHE = REPO / "var" / "test-weights"
"""Converted weights shared across test runs (a cache only: tests pass when it is empty)."""


def start_with_own_metrics(
    start: Callable[..., Service], settings: Settings, log_dir: Path, role: str
) -> Service:
    """Start a worker on its own metrics port (workers share the machine).

    Args:
        start: a ``start_*_worker`` function of ``imgq.local.supervisor``.
        settings: the settings to start it with; only the metrics port is changed.
        log_dir: where its log goes.
        role: the start of its Celery node name (a free port number makes it unique).

    Returns:
        The running worker; its ``.url`` is the base URL of its metrics endpoint.
    """
    own_port = settings.model_copy(update={"metrics_port": free_port()})
    service = start(own_port, log_dir, name=f"{role}-{free_port()}")
    service.url = f"http://127.0.0.1:{own_port.metrics_port}"
    return service
