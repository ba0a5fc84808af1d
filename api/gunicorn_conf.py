"""Gunicorn settings and hooks (``--config python:api.gunicorn_conf``).

Prometheus' multiprocess mode: each gunicorn worker process writes its metrics to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` adds them up, so a scrape counts every process,
not whichever one answered. The folder must be set before ``prometheus_client`` is first
imported (it picks its storage at import) and must start empty, and a dead worker's gauges must
be dropped. This module is loaded by the gunicorn master before it forks, so it does the first
two at import time; ``child_exit`` does the third. It deliberately does not import
``prometheus_client`` (nor ``api``, which imports it) at module level.

gunicorn's own error answers become the API's JSON envelope: see ``post_worker_init``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn import util


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


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Stand-in for ``gunicorn.util.write_error``: the JSON envelope instead of an HTML page."""
    from api.errors import server_error_response

    util.write_nonblock(sock, server_error_response(status_int, reason, mesg))


def post_worker_init(worker: Any) -> None:
    """Make gunicorn's own error answers (414, 431, 400 before Flask) imgq's JSON envelope.

    gunicorn answers a request it cannot parse (request line over ``limit_request_line``,
    headers over their limits, a malformed request line) itself, with an HTML page, which
    breaks the API's rule that every 4xx is a JSON envelope with a stable code. Every worker
    class answers those through ``Worker.handle_error``, which picks the status, logs and
    writes the access log, then renders the page with ``gunicorn.util.write_error``; swapping
    that one function in the worker process changes only the page. A worker subclass would be
    the other hook, but the worker class comes from the command line (``--worker-class gthread``
    in ``imgq.local.commands.api_argv`` and the Docker entrypoint), which overrides this file's
    settings, and overriding ``handle_error`` would mean copying its status table.
    ``tests/test_hostile_input.py`` (``request-line-too-long``) checks this against the real
    server, so a gunicorn upgrade that stops calling ``util.write_error`` is caught.
    """
    util.write_error = write_json_error
