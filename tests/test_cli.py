"""The ``imgq`` command line against the real local stack (gunicorn, workers, Redis)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from imgq.client.cli import (
    PIPE_CLOSED_STATUS,
    SPARK_BARS,
    SPARK_GAP,
    build_parser,
    cmd_canary,
    cmd_models,
    cmd_retrain,
    main,
    sparkline,
)
from imgq.client.http import ImgqClient
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


def test_events_lists_the_models_history_newest_first_as_a_table_and_as_json(
    api_server: str,
) -> None:
    changed = http.request("PATCH", f"{api_server}/models/imagenet", json={"retain_images": False})
    assert changed.status_code == 200, changed.text
    table = imgq(api_server, "events", "imagenet", "--limit", "5")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["time", "event", "by", "version", "reason"]
    newest = lines[1].split()  # the settings change (other tests' events are older)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", newest[0]) and re.fullmatch(r"[\d:]{8}Z", newest[1])
    assert newest[2:] == ["settings_changed", "admin"]
    assert len(lines) <= 6  # the header and --limit rows
    document = json.loads(imgq(api_server, "--json", "events", "imagenet", "--limit", "1").stdout)
    (event,) = document["events"]
    assert event["event"] == "settings_changed" and event["details"] == {"retain_images": False}
    assert "next_cursor" in document
    missing = imgq(api_server, "events", "nope")
    assert missing.returncode == 1 and "model_not_found" in missing.stderr


def test_policy_is_set_from_key_value_pairs_shown_and_turned_off(api_server: str) -> None:
    try:
        table = imgq(
            api_server, "policy", "imagenet", "--set", "promote=auto", "--set", "canary_traffic=0.2"
        )
        assert table.returncode == 0, table.stderr
        rows = dict(line.split() for line in table.stdout.splitlines()[1:])
        assert rows["promote"] == "auto" and rows["canary_traffic"] == "0.2"
        assert rows["retrain_on_drift"] == "false"  # the server's defaults for the others
        shown = imgq(api_server, "--json", "policy", "imagenet")
        assert shown.returncode == 0, shown.stderr
        policy = json.loads(shown.stdout)
        assert policy["promote"] == "auto" and policy["canary_traffic"] == 0.2
        events = json.loads(imgq(api_server, "--json", "events", "imagenet", "--limit", "1").stdout)
        assert events["events"][0]["event"] == "policy_changed"
        unknown = imgq(api_server, "policy", "imagenet", "--set", "nope=1")
        assert unknown.returncode == 1 and "validation_error" in unknown.stderr
        malformed = imgq(api_server, "policy", "imagenet", "--set", "promote")
        assert malformed.returncode == 2 and "KEY=VALUE" in malformed.stderr
        off = imgq(api_server, "policy", "imagenet", "--off")
        assert off.returncode == 0 and "rollout policy off" in off.stdout, off.stderr
        gone = imgq(api_server, "policy", "imagenet")
        assert gone.returncode == 1 and "has no rollout policy" in gone.stderr
        assert "HTTP 404" in gone.stderr
    finally:
        http.request("DELETE", f"{api_server}/models/imagenet/policy")


def test_canary_and_retrain_refuse_what_the_builtin_model_cannot_do(api_server: str) -> None:
    active = imgq(api_server, "canary", "imagenet", "1", "--traffic", "0.2")
    assert active.returncode == 1 and "version_is_active" in active.stderr, active.stderr
    not_running = imgq(api_server, "canary", "imagenet", "1", "--stop")
    assert not_running.returncode == 1 and "is not in canary" in not_running.stderr
    usage = imgq(api_server, "canary", "imagenet", "1")  # --traffic or --stop
    assert usage.returncode == 2
    builtin = imgq(api_server, "retrain", "imagenet", "--epochs", "1")
    assert builtin.returncode == 1 and "invalid_base" in builtin.stderr, builtin.stderr


def test_policy_values_are_read_as_numbers_words_or_text() -> None:
    pairs = ["a=3", "b=0.5", "c=true", "d=null", "e=auto", "f=nan", "g=a=b"]
    parsed = build_parser().parse_args(["policy", "m", *[f"--set={p}" for p in pairs]])
    assert dict(parsed.set) == {
        "a": 3,
        "b": 0.5,
        "c": True,
        "d": None,
        "e": "auto",
        "f": "nan",
        "g": "a=b",
    }


class StubClient(ImgqClient):
    """Answers ``imgq retrain --wait`` and ``imgq canary`` as the server would, without one (a
    retrain that succeeds, or a second version, needs training)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "key")
        self.sent: dict[str, Any] = {}

    def retrain(self, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        self.sent = overrides
        return {"id": "job-1", "status": "queued"}

    def follow(self, job_id: str, poll_s: float = 1.0) -> Iterator[dict[str, Any]]:
        new = {"since_version": 1, "images": 3, "per_class": {"cat": 2, "dog": 1}}
        result = {
            "model": "pets",
            "version": 2,
            "metrics": {"accuracy": 0.875},
            "activated": False,
            "activation_reason": "a retrain is never activated on its own",
            "retrain": {"parent_version": 1, "new_images": {**new, "per_source": {"feedback": 3}}},
        }
        yield {"id": job_id, "status": "succeeded", "error": None, "result": result}

    def start_canary(self, name: str, version: int, traffic: float) -> dict[str, Any]:
        canary = {"version": version, "traffic": traffic, "started_at": 0.0, "by": "alice"}
        return {"name": name, "active_version": 1, "canary": canary}


def test_retrain_wait_and_canary_show_the_new_version_and_the_canary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = StubClient()
    args = build_parser().parse_args(["retrain", "pets", "--epochs", "2", "--force", "--wait"])
    assert cmd_retrain(client, args) is None
    assert client.sent == {"epochs": 2, "force": True}
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pets v2: accuracy 0.875, activated false (")
    assert lines[1] == "new images since dataset v1: 3"
    assert [line.split() for line in lines if line.startswith(("cat", "dog", "feedback"))] == [
        ["cat", "2"],
        ["dog", "1"],
        ["feedback", "3"],
    ]
    queued = cmd_retrain(client, build_parser().parse_args(["retrain", "pets"]))
    assert queued is None and client.sent == {}
    assert capsys.readouterr().out == "pets: retrain queued as job job-1\n"
    canary = build_parser().parse_args(["canary", "pets", "2", "--traffic", "0.125"])
    assert cmd_canary(client, canary) is None
    assert capsys.readouterr().out == (
        "pets: version 2 in canary with 12.5% of unpinned jobs (active version 1), "
        "since 1970-01-01 00:00:00Z by alice\n"
    )


def test_help_is_plain_text_without_the_docstrings_backticks() -> None:
    parser = build_parser()
    subcommands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    pages = [parser.format_help(), *(sub.format_help() for sub in subcommands.choices.values())]
    assert "imgq: the command-line client. Tables for people, --json for scripts." in pages[0]
    assert not [page for page in pages if "``" in page]


class ModelsStub(ImgqClient):
    """Answers ``imgq models`` with a trained version and the built-in one (no metrics)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", "key")

    def models(self) -> list[dict[str, Any]]:
        trained = {"version": 1, "active": True, "backbone": "efficientnet_lite0"}
        return [
            {
                "name": "pets",
                "owner": "alice",
                "versions": [{**trained, "metrics": {"accuracy": 11 / 12}}],
            },
            {"name": "imagenet", "owner": "system", "versions": [{**trained, "metrics": {}}]},
        ]


def test_models_table_shows_accuracies_to_three_decimals(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cmd_models(ModelsStub(), build_parser().parse_args(["models"])) is None
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["pets", "alice", "1", "*", "efficientnet_lite0", "0.917"]
    assert rows[2][-1] == "—"  # the built-in model has no test accuracy


def _into_closed_pipe(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the client with stdout on a pipe whose reader is already gone (as ``| head`` is
    once it has its lines)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "imgq.client.cli", *args],
            cwd=REPO,
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


def test_output_cut_short_by_its_reader_ends_quietly_like_sigpipe(api_server: str) -> None:
    helped = _into_closed_pipe("--help")  # argparse ignores the failed write: quiet either way
    assert helped.returncode in (0, PIPE_CLOSED_STATUS) and helped.stderr == b""
    env = {**os.environ, "IMGQ_URL": api_server, "IMGQ_KEY": credentials.keys["admin"]}
    for command in (["models"], ["--json", "models"]):
        listed = _into_closed_pipe(*command, env=env)
        assert (listed.returncode, listed.stderr) == (PIPE_CLOSED_STATUS, b""), command
