"""The ``imgq`` command line against the real local stack (gunicorn, workers, Redis)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from imgq.client.cli import SPARK_BARS, SPARK_GAP, main, sparkline
from imgq.local.supervisor import REPO, Service
from tests.support.datasets import make_dataset_zip
from tests.support.http import credentials, http, wait_for_job

pytestmark = pytest.mark.e2e


def imgq(base: str, *args: str, key: str = "admin") -> subprocess.CompletedProcess[str]:
    """Run the client as a user would, with the URL and key in the environment."""
    env = {**os.environ, "IMGQ_URL": base, "IMGQ_KEY": credentials.keys[key]}
    return subprocess.run(
        [sys.executable, "-m", "imgq.client.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_predict_waits_and_prints_labels_as_a_table_and_as_json(
    api_server: str, predict_worker: Service, tmp_path: Path, cat_jpeg: bytes
) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(cat_jpeg)
    table = imgq(api_server, "predict", str(image), "--wait", "--top-k", "2")
    assert table.returncode == 0, table.stderr
    assert "model imagenet v1" in table.stdout and "Egyptian Mau" in table.stdout
    as_json = imgq(api_server, "--json", "predict", str(image), "--wait")
    document = json.loads(as_json.stdout)
    assert document["status"] == "succeeded" and len(document["result"]["predictions"][0]) == 5
    listed = json.loads(imgq(api_server, "--json", "jobs", "--limit", "3").stdout)
    assert document["id"] in [job["id"] for job in listed["jobs"]]
    shown = json.loads(imgq(api_server, "job", document["id"]).stdout)
    assert shown["id"] == document["id"]


def test_errors_exit_non_zero_with_the_servers_message(api_server: str, tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"hello")
    failed = imgq(api_server, "predict", str(bad))
    assert failed.returncode == 1
    assert "invalid_image" in failed.stderr and "HTTP 400" in failed.stderr
    refused = imgq(api_server, "activate", "imagenet", "1", key="alice")
    assert refused.returncode == 1 and "forbidden" in refused.stderr
    missing = imgq(api_server, "job", "nope")
    assert missing.returncode == 1 and "job_not_found" in missing.stderr


def test_finetune_uploads_a_folder_and_follows_training(
    api_server: str, predict_worker: Service, train_worker: Service, tmp_path: Path
) -> None:
    with zipfile.ZipFile(BytesIO(make_dataset_zip(per_class=10, seed=5))) as archive:
        archive.extractall(tmp_path / "photos")  # a folder of class sub-folders, as users have
    run = imgq(
        api_server,
        "finetune",
        str(tmp_path / "photos"),
        "--model",
        "cli-pets",
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--fine-tune-epochs",
        "1",
        "--batch-size",
        "8",
    )
    assert run.returncode == 0, run.stderr
    assert "cli-pets v1: accuracy" in run.stdout and "activated" in run.stdout
    assert "upload" in run.stderr and "fine_tune" in run.stderr  # the progress bars
    models = imgq(api_server, "models")
    assert "cli-pets" in models.stdout


def test_datasets_and_dataset_show_an_ingested_dataset_as_tables_and_as_json(
    api_server: str, train_worker: Service, tmp_path: Path
) -> None:
    sent = http.post(
        f"{api_server}/datasets/clidata/versions",
        data={"data_mode": "replace"},
        files={"dataset": ("clidata.zip", make_dataset_zip(per_class=6), "application/zip")},
    )
    assert sent.status_code == 202, sent.text
    ingest = wait_for_job(api_server, sent.json()["id"], timeout_s=120)
    assert ingest["type"] == "ingest" and ingest["status"] == "succeeded", ingest
    table = imgq(api_server, "datasets")
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("clidata "))
    assert row[2:5] == ["1", "18", "3"]  # version, images, classes
    listed = json.loads(imgq(api_server, "--json", "datasets").stdout)
    item = next(d for d in listed if d["name"] == "clidata")
    assert (item["version"], item["images"], item["classes"]) == (1, 18, 3)
    shown = imgq(api_server, "dataset", "clidata")
    assert shown.returncode == 0, shown.stderr
    assert "dataset clidata" in shown.stdout and "v1: 18 images" in shown.stdout
    for label in ("cat", "coffee", "rocket"):
        assert any(line.split()[0] == label for line in shown.stdout.splitlines() if line)
    document = json.loads(imgq(api_server, "--json", "dataset", "clidata").stdout)
    (version,) = document["versions"]
    assert version["version"] == 1 and version["images"] == 18
    assert sorted(version["classes"]) == ["cat", "coffee", "rocket"]
    assert version["fingerprint"][:12] in shown.stdout
    # A fine-tune on a stored version posts a multipart form without a file: the server reads
    # it (and answers that the version does not exist) rather than refusing the request's type.
    missing = imgq(api_server, "finetune", "--model", "cli-ds", "--dataset-version", "clidata:9")
    assert missing.returncode == 1 and "dataset_version_not_found" in missing.stderr
    # Two images of a new class appended to clidata: judged with its classes (replacing, the
    # server would say a classifier needs two classes), so --append and --dataset-name went.
    with zipfile.ZipFile(BytesIO(make_dataset_zip(per_class=2, seed=3))) as archive:
        archive.extractall(tmp_path / "more", [n for n in archive.namelist() if "cat/" in n])
    (tmp_path / "more" / "cat").rename(tmp_path / "more" / "dog")
    appended = imgq(
        api_server,
        "finetune",
        str(tmp_path / "more"),
        "--model",
        "cli-ds",
        "--dataset-name",
        "clidata",
        "--append",
    )
    assert appended.returncode == 1 and "With the upload" in appended.stderr, appended.stderr
    unknown = imgq(api_server, "dataset", "nope")
    assert unknown.returncode == 1 and "dataset_not_found" in unknown.stderr


def test_finetune_without_a_folder_or_a_stored_dataset_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--key", "k", "finetune", "--model", "cli-pets"])
    assert exited.value.code == 2
    assert "FOLDER, --dataset-version or --dataset-name" in capsys.readouterr().err


def test_monitor_shows_the_window_drift_and_online_accuracy_as_tables_and_as_json(
    api_server: str, predict_worker: Service, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    images = [base64.b64encode(b).decode() for b in (cat_jpeg, coffee_jpeg)]
    sent = http.post(f"{api_server}/jobs/predict", json={"images": images})
    assert sent.status_code == 202, sent.text
    job = wait_for_job(api_server, sent.json()["id"])
    assert job["status"] == "succeeded", job
    labels = [top[0]["label"] for top in job["result"]["predictions"]]
    feedback = http.post(f"{api_server}/jobs/{job['id']}/feedback", json={"labels": labels})
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["correct"] == [True, True]
    # Other tests may have predicted with imagenet (and sent feedback) in this session.
    table = imgq(api_server, "monitor", "imagenet", "1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = re.fullmatch(
        r"imagenet v1: (\d+)/1000 predictions in window, test accuracy \S+, "
        r"online accuracy [\d.]+ \((\d+) with feedback\)",
        lines[0],
    )
    assert header, lines[0]
    assert int(header[1]) >= 2 and int(header[2]) >= 2
    assert any(line.startswith("classes (chi-square)") for line in lines)
    assert any(line.startswith("confidence (KS)") for line in lines)
    assert all(label in table.stdout for label in labels)  # the class and feedback tables
    assert any(line.startswith("true class") for line in lines)
    spark = lines[-1].removeprefix("online accuracy, oldest to newest: ")
    assert spark != lines[-1] and spark and set(spark) <= set(SPARK_BARS + SPARK_GAP)
    assert set(spark) & set(SPARK_BARS)  # the new feedback's slice has an accuracy
    as_json = imgq(api_server, "--json", "monitor", "imagenet")  # the active version
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert (document["model"], document["version"], document["window"]) == ("imagenet", 1, 1000)
    assert document["predictions"] >= 2 and document["feedback"]["count"] >= 2
    assert all(document["classes"]["observed"][label] >= 1 for label in labels)
    assert len(document["feedback"]["accuracy_series"]) == len(spark)
    missing = imgq(api_server, "monitor", "nope")
    assert missing.returncode == 1 and "model_not_found" in missing.stderr


def test_sparkline_draws_accuracies_from_the_lowest_to_the_highest_bar() -> None:
    assert sparkline([None, 0.0, 0.5, 1.0, None]) == "·▁▅█·"
    assert sparkline([]) == ""
    assert sparkline([1.2, -0.1]) == "█▁"  # out of range: clamped
