"""Exports of a fine-tuned version, each loaded by its own runtime and checked against Keras."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgq.local.supervisor import Service
from tests.support.datasets import cat_image, make_dataset_zip, submit_finetune
from tests.support.http import http, wait_for_job
from tests.support.metrics import scrape_url

pytestmark = pytest.mark.e2e

FORMATS = ("saved_model", "tflite", "tflite_dynamic", "tflite_int8")


@pytest.fixture(scope="module")
def exportable(api_server: str, predict_worker: Service, train_worker: Service) -> str:
    """A small fine-tuned model, ``exportable`` v1."""
    response = submit_finetune(
        api_server, make_dataset_zip(per_class=24, seed=3), model="exportable"
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(api_server, response.json()["id"], timeout_s=600)
    assert job["status"] == "succeeded", job
    return api_server


def _export(base: str, fmt: str) -> dict[str, Any]:
    made = http.get(f"{base}/models/exportable/versions/1/exports").json()
    for report in made:
        if report["format"] == fmt:
            return dict(report)
    response = http.post(f"{base}/models/exportable/versions/1/exports", json={"format": fmt})
    assert response.status_code == 202, response.text
    job = wait_for_job(base, response.json()["id"], timeout_s=600)
    assert job["status"] == "succeeded", job
    return dict(job["result"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_export_agrees_with_the_keras_model(exportable: str, fmt: str) -> None:
    report = _export(exportable, fmt)
    print(f"export {fmt}: {report}")  # the figures for the record (pytest -s shows them)
    assert report["format"] == fmt and report["test_images"] >= 6
    if fmt == "tflite_int8":
        assert report["within_margin"], report  # quantized: only within the stated margin
    else:
        assert report["agreement"] >= 0.95, report
    download = http.get(f"{exportable}/models/exportable/versions/1/exports/{fmt}")
    assert download.status_code == 200
    assert len(download.content) == report["size_bytes"]
    listed = http.get(f"{exportable}/models/exportable/versions/1/exports").json()
    assert fmt in [entry["format"] for entry in listed]


def test_tflite_exports_run_in_the_litert_interpreter(exportable: str, tmp_path: Path) -> None:
    from ml.export import run_tflite
    from ml.preprocess import ImageLimits, decode_image

    cat = decode_image(cat_image(), (64, 64), ImageLimits(10**7, 10**7))[None]
    for fmt in ("tflite", "tflite_int8"):
        _export(exportable, fmt)
        content = http.get(f"{exportable}/models/exportable/versions/1/exports/{fmt}").content
        scores = run_tflite(content, cat)
        assert scores.shape == (1, 3)
        assert int(np.argmax(scores)) == 0  # "cat" is the first class, alphabetically


def test_saved_model_signature_takes_jpeg_bytes(exportable: str, tmp_path: Path) -> None:
    import tensorflow as tf

    _export(exportable, "saved_model")
    archive = http.get(f"{exportable}/models/exportable/versions/1/exports/saved_model").content
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        bundle.extractall(tmp_path / "saved_model")
    signature = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    outputs = signature(images=tf.constant([cat_image()]))
    assert outputs["classes"].numpy()[0, 0].decode() == "cat"
    assert outputs["scores"].numpy()[0, 0] > 0.5


def test_unknown_export_is_a_404_and_builtin_cannot_export(exportable: str) -> None:
    missing = http.get(f"{exportable}/models/exportable/versions/1/exports/onnx")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "export_not_found"
    bad = http.post(f"{exportable}/models/exportable/versions/1/exports", json={"format": "x"})
    assert bad.status_code == 422
    builtin = http.post(
        f"{exportable}/models/imagenet/versions/1/exports", json={"format": "tflite"}
    )
    job = wait_for_job(exportable, builtin.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "export_not_supported"


def test_cli_exports_and_saves_the_file(exportable: str, tmp_path: Path) -> None:
    from tests.test_cli import imgq

    target = tmp_path / "model.tflite"
    run = imgq(exportable, "export", "exportable", "1", "tflite_dynamic", "-o", str(target))
    assert run.returncode == 0, run.stderr
    assert "agreement" in run.stdout
    assert target.stat().st_size > 100_000


def test_an_export_request_is_idempotent_and_its_job_is_counted(
    exportable: str, train_worker: Service
) -> None:
    url = f"{exportable}/models/exportable/versions/1/exports"
    key = {"Idempotency-Key": "export-tflite-once"}
    first = http.post(url, json={"format": "tflite"}, headers=key)
    assert first.status_code == 202, first.text
    replay = http.post(url, json={"format": "tflite"}, headers=key)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    conflict = http.post(url, json={"format": "tflite_dynamic"}, headers=key)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert wait_for_job(exportable, first.json()["id"], timeout_s=600)["status"] == "succeeded"
    finished = scrape_url(f"{train_worker.url}/metrics")
    assert (
        finished['imgq_worker_jobs_finished_total{code="",status="succeeded",type="export"}'] >= 1
    )
