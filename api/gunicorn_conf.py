"""Gunicorn settings for Prometheus' multiprocess mode (``--config python:api.gunicorn_conf``).

Each gunicorn worker process writes its metrics to files in ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` adds them up, so a scrape counts every process, not whichever one answered. The
folder must be set before ``prometheus_client`` is first imported (it picks its storage at
import) and must start empty, and a dead worker's gauges must be dropped. This module is loaded
by the gunicorn master before it forks, so it does the first two at import time; the hook does
the third. It deliberately does not import ``prometheus_client`` at module level.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _prepare_metrics_folder() -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        folder = tempfile.mkdtemp(prefix="imgq-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.iterdir():
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


_prepare_metrics_folder()


def child_exit(server: Any, worker: Any) -> None:
    """A worker process ended: stop counting its live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
