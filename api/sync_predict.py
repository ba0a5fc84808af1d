"""One predict job, answered in the same request: what the inference-protocol views run.

Open Inference Protocol and TF Serving clients expect the prediction in the answer to their
request. Their views are synchronous views of an ordinary predict job, not a second serving
path: the job is checked, admitted against the caller's quotas, stored, queued and batched
exactly like one from ``POST /jobs/predict`` (``queue_predict_job``), shows in the caller's
``GET /jobs``, and the answer waits for it as ``Prefer: wait`` does (``send_and_wait``), up to
``IMGQ_SYNC_INFER_TIMEOUT_S``. A job still open then is answered ``504`` and runs on; a failed
job is answered with the error it stored, at that error's status.
"""

from __future__ import annotations

import re
from typing import Any

from werkzeug.exceptions import GatewayTimeout

from api.model_access import version_of, visible_model
from api.predict import queue_predict_job, send_predict_job
from api.services import services
from api.submission import send_and_wait
from imgq.errors import Conflict, ImgqError, InternalError, InvalidRequest, ModelNotFound
from imgq.jobs.status import JobStatus, JobType
from ml.registry import MODEL_NAME, ModelVersion

_VERSION_NUMBER = re.compile(r"[0-9]{1,18}")


def requested_version(name: str, version: str | None) -> tuple[str, ModelVersion]:
    """The model id and version a protocol path names, as the caller may see them.

    Args:
        name: the model's name in the path.
        version: the path's version string, or None for the model's active version.

    Raises:
        ModelNotFound: no such model, or not one the caller may see (404 alike).
        VersionNotFound: no such version. InvalidRequest: the version is not a number.
    """
    if not MODEL_NAME.fullmatch(name):
        raise ModelNotFound(f"No model named {name!r}.", {"model": name})
    model = visible_model(name)
    if version is not None and not _VERSION_NUMBER.fullmatch(version):
        raise InvalidRequest(f"Version {version!r} is not a version number.")
    return model, version_of(model, None if version is None else int(version))


def _error_classes() -> dict[str, type[ImgqError]]:
    """Every error class by its code (the hierarchy defines each code once)."""
    found: dict[str, type[ImgqError]] = {}
    frontier: list[type[ImgqError]] = [ImgqError]
    while frontier:
        cls = frontier.pop()
        found.setdefault(cls.code, cls)
        frontier.extend(cls.__subclasses__())
    return found


def stored_error(error: dict[str, Any] | None) -> ImgqError:
    """The error a failed job stored, as the exception it was (its code keeps its status)."""
    error = error or {}
    cls = _error_classes().get(str(error.get("code")), InternalError)
    return cls(str(error.get("message", "The job failed.")), error.get("details"))


def _await_job(job_id: str, wait_s: float) -> dict[str, Any] | None:
    """The document of an already queued job once it has ended, or None after ``wait_s``."""
    svc = services()
    with svc.waiters.watching(job_id, wait_s) as event:  # before reading: no lost wake-up
        document = svc.jobs.get(job_id)
        if document is not None and not document["status"].is_terminal and event is not None:
            event.wait(wait_s)
            document = svc.jobs.get(job_id)
    return document if document is not None and document["status"].is_terminal else None


def predict_now(
    images: list[bytes],
    options: dict[str, Any],
    wait_s: float | None = None,
    *,
    max_top_k: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Run a predict job for the caller and return its result, or raise why there is none.

    Args:
        images: the encoded images, in order.
        options: ``model``, ``version`` and ``top_k`` as ``queue_predict_job`` takes them.
        wait_s: how long to wait for the job (at most, and by default,
            ``IMGQ_SYNC_INFER_TIMEOUT_S``).
        max_top_k: the ``top_k`` ceiling, where a protocol needs every class's score.

    Returns:
        The job's id and its ``result`` (``model``, ``version``, ``predictions``).

    Raises:
        ImgqError: the request was refused (as ``POST /jobs/predict`` would refuse it), or the
            job failed (its stored error), or was canceled (409).
        GatewayTimeout: the job had not ended after ``wait_s``; it runs on.
    """
    limit_s = services().settings.sync_infer_timeout_s
    wait_s = limit_s if wait_s is None else min(wait_s, limit_s)
    options = dict(options)  # queue_predict_job consumes some keys
    job_id, replay = queue_predict_job(images, options, max_top_k=max_top_k)
    if replay is not None:  # an Idempotency-Key seen before: that job's answer, when it ends
        job_id = str(replay.get_json()["id"])
        document = _await_job(job_id, wait_s)
    else:
        document = send_and_wait(
            job_id,
            JobType.PREDICT,
            lambda: send_predict_job(job_id, len(images), options),
            wait_s,
        )
    if document is None:
        raise GatewayTimeout(
            f"The prediction did not finish within {wait_s:g} s; it goes on as job {job_id} "
            f"(GET /jobs/{job_id})."
        )
    if document["status"] is JobStatus.FAILED:
        raise stored_error(document.get("error"))
    if document["status"] is not JobStatus.SUCCEEDED:
        raise Conflict(f"Job {job_id} was canceled before it ran.", {"id": job_id})
    return job_id, dict(document["result"])
