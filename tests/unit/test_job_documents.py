"""``job_json``: the served job document, rendered from the stored record without parsing it.

It must say exactly what ``JobSchema`` made of ``job_document`` before it replaced that path:
the same fields and values for every kind of record a job goes through.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.schemas import JobSchema
from imgq.jobs.documents import PredictResult, job_document, job_json

CREATED = "1796180000.123456"
PREDICTIONS = [[{"label": "tabby", "index": 281, "score": 0.5}]]

RECORDS = {
    "queued": {"id": "a1", "type": "predict", "status": "queued", "created_at": CREATED},
    "succeeded predict": {
        "id": "a2",
        "type": "predict",
        "status": "succeeded",
        "created_at": CREATED,
        "started_at": "1796180000.2",
        "finished_at": "1796180001",
        "client": "alice",
        "model": "@alice/pets",
        "result": json.dumps(PredictResult("pets", 3, PREDICTIONS).to_dict()),
    },
    "failed": {
        "id": "a3",
        "type": "finetune",
        "status": "failed",
        "created_at": CREATED,
        "finished_at": "1796180009.5",
        "error": json.dumps({"code": "invalid_image", "message": "bad", "details": {"image": 1}}),
    },
    "running with progress": {
        "id": "a4",
        "type": "finetune",
        "status": "running",
        "created_at": CREATED,
        "started_at": "1796180002",
        "progress": json.dumps({"phase": "head", "epoch": 2, "total_epochs": 4}),
    },
}


@pytest.mark.parametrize("record", RECORDS.values(), ids=list(RECORDS))
@pytest.mark.parametrize("webhook", [None, {"url": "https://x.example/h", "state": "pending"}])
def test_the_rendered_document_is_what_the_schema_made_of_it(
    record: dict[str, str], webhook: dict[str, Any] | None
) -> None:
    expected = JobSchema().dump({**job_document(record), "webhook": webhook})

    assert json.loads(job_json(record, webhook)) == expected
