"""Fine-tuning end to end: upload, train, evaluate, publish, activate, hot-swap, roll back.

Real Redis, a real training worker (prefork) and a real prediction worker (threads). The
dataset is ``tests.support.datasets.make_dataset_zip``: random crops, flips and colour shifts
of scikit-image's cat, coffee cup and rocket, at a small size so training takes seconds.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from imgq.local.supervisor import Service
from imgq.settings import Settings
from tests.support.datasets import cat_image, make_dataset_zip, submit_finetune
from tests.support.http import http, wait_for_job
from tests.support.metrics import scrape, scrape_url

pytestmark = pytest.mark.e2e


def _predict(base_url: str, image: bytes, **options: Any) -> dict[str, Any]:
    body = {"images": [base64.b64encode(image).decode()], "top_k": 1, **options}
    response = http.post(f"{base_url}/jobs/predict", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return wait_for_job(base_url, response.json()["id"])


@pytest.fixture(scope="module")
def pets_v1(api_server: str, predict_worker: Service, train_worker: Service) -> dict[str, Any]:
    """The first fine-tune of the module: model ``pets``, version 1; its finished job."""
    response = submit_finetune(api_server, make_dataset_zip(), model="pets")
    assert response.status_code == 202, response.text
    return wait_for_job(api_server, response.json()["id"], timeout_s=600)


def test_finetune_publishes_activates_and_swaps_running_workers(
    api_server: str, train_worker: Service, pets_v1: dict[str, Any]
) -> None:
    job = pets_v1
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["model"] == "pets" and result["version"] == 1 and result["activated"]
    report = result["metrics"]
    print(f"fine-tune e2e: test accuracy {report['accuracy']:.3f} on {report['count']} images")
    assert report["accuracy"] >= 0.75, report
    assert set(report["per_class"]) == {"cat", "coffee", "rocket"}
    assert len(report["confusion_matrix"]) == 3
    assert all(0.0 <= report["per_class"][name]["auc"] <= 1.0 for name in report["per_class"])
    assert report["auc_undefined"] == [] and 0.0 <= report["macro_auc"] <= 1.0
    assert 0.0 <= report["ece"] <= report["mce"] <= 1.0
    calibration = report["calibration"]
    print(f"fine-tune e2e: calibration {calibration}")
    assert calibration["temperature"] > 0 and calibration["reason"]
    assert {"roc.png", "reliability.png"} <= set(result["artifacts"])
    assert job["progress"]["total_epochs"] == 5
    for name in result["artifacts"]:
        artifact = http.get(f"{api_server}/jobs/{job['id']}/artifacts/{name}", timeout=10)
        assert artifact.status_code == 200 and artifact.content
        of_version = http.get(f"{api_server}/models/pets/versions/1/artifacts/{name}", timeout=10)
        assert of_version.content == artifact.content  # the same file, addressed by its version
        if name.endswith(".png"):
            assert artifact.content.startswith(b"\x89PNG\r\n\x1a\n"), name
    missing = http.get(f"{api_server}/models/pets/versions/1/artifacts/model.keras", timeout=10)
    assert missing.status_code == 404  # only the listed artifacts, never the model itself
    model = http.get(f"{api_server}/models/pets", timeout=5).json()
    assert model["active_version"] == 1
    assert model["versions"][0]["training"]["dataset_fingerprint"]
    assert model["versions"][0]["metrics"]["ece"] == report["ece"]
    assert model["versions"][0]["metrics"]["calibration"] == calibration

    predicted = _predict(api_server, cat_image(), model="pets")
    assert predicted["status"] == "succeeded", predicted
    assert predicted["result"]["version"] == 1
    assert predicted["result"]["predictions"][0][0]["label"] == "cat"

    # A second version, trained while predictions keep flowing; none of them may fail.
    stop, seen, failures = threading.Event(), set(), []

    def keep_predicting() -> None:
        while not stop.is_set():
            document = _predict(api_server, cat_image(), model="pets")
            if document["status"] != "succeeded":
                failures.append(document)
            else:
                seen.add(document["result"]["version"])

    streams = [threading.Thread(target=keep_predicting) for _ in range(2)]
    for stream in streams:
        stream.start()
    try:
        second = submit_finetune(
            api_server,
            make_dataset_zip(seed=1),
            model="pets",
            base="pets:1",
            epochs=2,
            fine_tune_epochs=0,
        )
        assert second.status_code == 202, second.text
        job2 = wait_for_job(api_server, second.json()["id"], timeout_s=600)
        assert job2["status"] == "succeeded", job2
        assert job2["result"]["version"] == 2
        activated = http.post(f"{api_server}/models/pets/versions/2/activate", timeout=10)
        assert activated.status_code == 200 and activated.json()["active_version"] == 2
        _wait_for_version(api_server, 2)
        rollback = http.post(f"{api_server}/models/pets/versions/1/activate", timeout=10)
        assert rollback.json()["active_version"] == 1
        versions = rollback.json()["versions"]
        assert versions[1]["training"]["base"] == "pets:1"  # as the client named it
        _wait_for_version(api_server, 1)
    finally:
        stop.set()
        for stream in streams:
            stream.join()
    assert not failures
    # Every job in the streams succeeded and named a real version; _wait_for_version showed
    # that new jobs reached version 2 and then version 1 again.
    assert seen and seen <= {1, 2}
    pinned = _predict(api_server, cat_image(), model="pets", version=2)
    assert pinned["result"]["version"] == 2
    durations = scrape_url(f"{train_worker.url}/metrics")
    assert durations["imgq_finetune_duration_seconds_count{}"] >= 2


def test_finetune_logs_both_phases_for_tensorboard(
    api_server: str, pets_v1: dict[str, Any], tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    assert pets_v1["status"] == "succeeded", pets_v1
    assert "tensorboard.zip" in pets_v1["result"]["artifacts"]
    url = f"{api_server}/models/pets/versions/1/artifacts/tensorboard.zip"
    response = http.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert len(response.content) < 100_000  # epoch scalars only: no histograms, graph, profile
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path)
    assert not any(socket.gethostname() in name for name in names)  # the worker's host is ours
    runs = {str(Path(name).parent) for name in names}
    assert runs == {"head/train", "head/validation", "fine_tune/train", "fine_tune/validation"}
    losses = {}
    for run in runs:
        events = EventAccumulator(str(tmp_path / run), size_guidance={"tensors": 0})
        events.Reload()
        assert {"epoch_loss", "epoch_accuracy"} <= set(events.Tags()["tensors"]), run
        losses[run] = [float(make_ndarray(e.tensor_proto)) for e in events.Tensors("epoch_loss")]
    versions = http.get(f"{api_server}/models/pets", timeout=5).json()["versions"]
    [history] = [v["training"]["history"] for v in versions if v["version"] == 1]
    # The logs are the version's own training: every epoch of both phases, in order.
    logged = losses["head/train"] + losses["fine_tune/train"]
    assert logged == pytest.approx(history["loss"], rel=1e-5)
    logged = losses["head/validation"] + losses["fine_tune/validation"]
    assert logged == pytest.approx(history["val_loss"], rel=1e-5)
    assert len(losses["fine_tune/train"]) == 1  # FINETUNE_FORM's fine_tune_epochs


def _wait_for_version(base_url: str, version: int, attempts: int = 50) -> None:
    for _ in range(attempts):
        if _predict(base_url, cat_image(), model="pets")["result"]["version"] == version:
            return
    raise AssertionError(f"workers never served version {version}")


def test_running_finetune_is_canceled_between_batches_and_publishes_nothing(
    api_server: str, train_worker: Service
) -> None:
    response = submit_finetune(
        api_server,
        make_dataset_zip(per_class=20),
        model="slow",
        epochs=200,
        augment="true",
        batch_size=4,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    for _ in range(600):
        document = http.get(f"{api_server}/jobs/{job_id}", timeout=5).json()
        if document["progress"]:
            break
        threading.Event().wait(0.1)
    assert document["status"] == "running" and document["progress"]["phase"] == "head"
    canceled = http.delete(f"{api_server}/jobs/{job_id}", timeout=5)
    assert canceled.status_code == 202, canceled.text
    final = wait_for_job(api_server, job_id, timeout_s=120)
    assert final["status"] == "canceled"
    assert http.get(f"{api_server}/models/slow", timeout=5).status_code == 404
    again = http.delete(f"{api_server}/jobs/{job_id}", timeout=5)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_not_cancelable"


def test_version_that_fails_to_load_leaves_the_old_one_serving(
    api_server: str, predict_worker: Service, settings: Settings, pets_v1: dict[str, Any]
) -> None:
    import json
    import shutil

    assert pets_v1["status"] == "succeeded"
    store = Path(settings.model_store) / "@admin"  # the admin's namespace (ml.registry.model_id)
    shutil.copytree(store / "pets" / "1", store / "broken" / "1")
    meta = json.loads((store / "broken" / "1" / "meta.json").read_text())
    (store / "broken" / "1" / "meta.json").write_text(json.dumps({**meta, "name": "broken"}))
    (store / "broken" / "active").write_text("1\n")
    assert _predict(api_server, cat_image(), model="broken")["result"]["version"] == 1

    (store / "broken" / "2").mkdir()
    (store / "broken" / "2" / "meta.json").write_text(
        json.dumps({**meta, "name": "broken", "version": 2})
    )
    (store / "broken" / "2" / "model.keras").write_bytes(b"this is not a keras file")
    failures = 'imgq_worker_model_load_failures_total{model="broken",owner="admin"}'
    assert (
        http.post(f"{api_server}/models/broken/versions/2/activate", timeout=10).status_code == 200
    )
    for _ in range(100):
        if scrape(settings.metrics_port).get(failures, 0) >= 1:
            break
        threading.Event().wait(0.1)
    assert scrape(settings.metrics_port)[failures] >= 1
    still = _predict(api_server, cat_image(), model="broken")
    assert still["status"] == "succeeded" and still["result"]["version"] == 1
    pinned = _predict(api_server, cat_image(), model="broken", version=2)
    assert pinned["status"] == "failed"
    assert pinned["error"]["code"] == "model_load_failed"
