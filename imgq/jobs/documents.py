"""The JSON shapes clients read: the job document and a predict job's result.

A predict result is defined once here, ``PredictResult``: the batched path's Lua script joins
per-image predictions between the ``frame`` this module renders, and the explained path builds
the whole object; both come out the same.

``job_json`` renders the document as the API serves it straight from the stored record: the
result, error and progress are stored as JSON text and are spliced in as they are, so reading
a job never parses and re-encodes its result.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from imgq.jobs.status import JobStatus, JobType

_PLACEHOLDER = "\x00"


@dataclass(frozen=True)
class PredictResult:
    """``result`` of a succeeded predict job: one top-k list per image, in request order."""

    model: str
    version: int
    predictions: list[list[dict[str, Any]]]
    explanations: list[dict[str, Any]] | None = field(default=None)
    """Explained jobs only: per image, the class Grad-CAM explains and its artifact's name."""
    artifacts: list[str] | None = field(default=None)
    """Explained jobs only: the heatmaps' names under ``/jobs/<id>/artifacts/``."""

    def to_dict(self) -> dict[str, Any]:
        """The stored and served object (explanation fields only when there are some)."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @staticmethod
    def frame(model: str, version: int) -> tuple[str, str]:
        """The JSON text before and after the predictions list, for joining in Lua."""
        text = json.dumps(PredictResult(model, version, [[]]).to_dict()).replace(
            "[[]]", json.dumps([_PLACEHOLDER])
        )
        head, tail = text.split(json.dumps(_PLACEHOLDER))
        return head, tail


def _timestamp(value: str | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(value))) + (
        f"{float(value) % 1:.6f}"[1:] + "Z"
    )


def job_document(fields: dict[str, str]) -> dict[str, Any]:
    """Turn a stored record into the JSON document ``GET /jobs/<id>`` returns."""
    return {
        "id": fields["id"],
        "type": JobType(fields["type"]),
        "status": JobStatus(fields["status"]),
        "created_at": _timestamp(fields.get("created_at")),
        "started_at": _timestamp(fields.get("started_at")),
        "finished_at": _timestamp(fields.get("finished_at")),
        "result": json.loads(fields["result"]) if "result" in fields else None,
        "error": json.loads(fields["error"]) if "error" in fields else None,
        "progress": json.loads(fields["progress"]) if "progress" in fields else None,
    }


_STORED_JSON = ("result", "error", "progress")
"""Record fields that hold JSON text, in the order ``job_json`` appends them."""


def job_json(fields: dict[str, str], webhook: dict[str, Any] | None) -> bytes:
    """The JSON text of ``job_document(fields)`` with its ``webhook``, as ``GET /jobs/<id>``
    serves it, built without parsing the stored JSON fields (they are spliced in as text)."""
    head = orjson.dumps(
        {
            "id": fields["id"],
            "type": JobType(fields["type"]).value,
            "status": JobStatus(fields["status"]).value,
            "created_at": _timestamp(fields.get("created_at")),
            "started_at": _timestamp(fields.get("started_at")),
            "finished_at": _timestamp(fields.get("finished_at")),
            "webhook": webhook,
        }
    )
    parts = [head[:-1]]
    for name in _STORED_JSON:
        parts.append(b',"' + name.encode() + b'":' + fields.get(name, "null").encode())
    parts.append(b"}")
    return b"".join(parts)
