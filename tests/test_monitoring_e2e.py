"""Feedback and monitoring through the real gunicorn, prediction, training and webhooks workers.

Alice fine-tunes ``watched`` on cat, coffee and rocket crops (the one training of this file).
Feedback is refused, each with its JSON error, when it cannot be right; sent twice it counts
once; with ``add_to_dataset`` on a job that kept its images it makes a ``feedback`` version of
the model's dataset. Last, the monitoring story: new crops of the three classes do not drift and
their online accuracy is exactly what the labels the test sent say; then photos of classes the
model never saw do, and the periodic drift check (every 2 s in this session) puts one
``drift_detected`` in the model's event log, sends one signed ``model.drift_detected`` webhook,
and shows on ``/metrics``.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests
from pytest_httpserver import HTTPServer

from imgq import redis_keys
from imgq.jobs.store import JobStore, new_job_id
from imgq.local.supervisor import Service, wait_until
from imgq.monitoring import MonitorLog, window_entry
from imgq.settings import Settings
from imgq.webhooks.signing import sign
from ml.dataset_store import image_hash
from ml.registry import model_id
from tests.support.datasets import (
    MORE_PHOTOS,
    PHOTOS,
    class_entries,
    make_dataset_zip,
    submit_finetune,
)
from tests.support.http import Http, credentials, http, wait_for_job
from tests.support.metrics import scrape_url
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e

alice, bob = http.as_client("alice"), http.as_client("bob")
MODEL = "watched"
CLASSES = sorted(PHOTOS)
MAX_IMAGES_PER_JOB = 64
IN_DISTRIBUTION_PER_CLASS = 40  # 120 images, over the default IMGQ_DRIFT_MIN_PREDICTIONS
UNSEEN_PER_CLASS = 96  # 192 images of astronaut and cells
DRIFT_CHECK_WAIT_S = 30


@dataclass(frozen=True)
class Labelled:
    """A succeeded predict job of alice's model, with the true label of each of its images."""

    job_id: str
    truths: list[str]
    predicted: list[str]


# --- helpers ---------------------------------------------------------------------------------


def _b64(images: list[bytes]) -> list[str]:
    return [base64.b64encode(image).decode() for image in images]


def _error(response: requests.Response) -> tuple[int, str]:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    return response.status_code, response.json()["error"]["code"]


def _submit(base: str, caller: Http, images: list[bytes], **fields: Any) -> str:
    response = caller.post(f"{base}/jobs/predict", json={"images": _b64(images), **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _succeeded(base: str, job_id: str) -> dict[str, Any]:
    job = wait_for_job(base, job_id, timeout_s=120)
    assert job["status"] == "succeeded", job
    return job


def _top1(job: dict[str, Any]) -> list[str]:
    return [str(top[0]["label"]) for top in job["result"]["predictions"]]


def _predict_labelled(base: str, entries: dict[str, bytes], **fields: Any) -> list[Labelled]:
    """Alice's predictions of ``<class>/<file>`` entries, in jobs of at most 64 images (all
    submitted before any is waited for)."""
    items = list(entries.items())
    chunks = [
        items[start : start + MAX_IMAGES_PER_JOB]
        for start in range(0, len(items), MAX_IMAGES_PER_JOB)
    ]
    job_ids = [
        _submit(base, alice, [image for _, image in chunk], model=MODEL, **fields)
        for chunk in chunks
    ]
    jobs = []
    for job_id, chunk in zip(job_ids, chunks, strict=True):
        job = _succeeded(base, job_id)
        assert job["result"]["version"] == 1
        truths = [name.split("/")[0] for name, _ in chunk]
        jobs.append(Labelled(job_id, truths, _top1(job)))
    return jobs


def _feedback(base: str, caller: Http, job_id: str, labels: list[Any], **fields: Any) -> Any:
    return caller.post(f"{base}/jobs/{job_id}/feedback", json={"labels": labels, **fields})


def _monitoring(base: str, window: int) -> dict[str, Any]:
    response = alice.get(f"{base}/models/{MODEL}/versions/1/monitoring", params={"window": window})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _drift_events(base: str) -> list[dict[str, Any]]:
    response = alice.get(f"{base}/models/{MODEL}/events")
    assert response.status_code == 200, response.text
    return [e for e in response.json()["events"] if e["event"] == "drift_detected"]


def _version_labels(metric: str, **extra: str) -> str:
    labels = {"owner": "alice", "model": MODEL, "version": "1", **extra}
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _feedback_totals(base: str) -> dict[str, float]:
    samples = scrape_url(f"{base}/metrics")
    return {
        outcome: samples.get(_version_labels("imgq_feedback_total", outcome=outcome), 0.0)
        for outcome in ("correct", "incorrect")
    }


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watched(
    api_server: str, predict_worker: Service, train_worker: Service, webhooks_worker: Service
) -> str:
    """Alice's ``watched`` v1, trained on 40 crops of each class (4 of each in its test split,
    the drift tests' reference); yields the API's base URL."""
    response = submit_finetune(
        api_server, make_dataset_zip(per_class=40, seed=21), caller=alice, model=MODEL
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(api_server, response.json()["id"], timeout_s=600)
    assert job["status"] == "succeeded", job
    assert (job["result"]["model"], job["result"]["version"]) == (MODEL, 1)
    return api_server


@pytest.fixture(scope="module")
def finetune_job_id(watched: str) -> str:
    """The id of the fine-tune that made ``watched`` (a job that is not a prediction)."""
    jobs = alice.get(f"{watched}/jobs", params={"type": "finetune"}).json()["jobs"]
    return str(jobs[0]["id"])


@pytest.fixture
def job_store(settings: Settings) -> JobStore:
    """The session's job records, written directly (for jobs no worker will take)."""
    return JobStore(redis.Redis.from_url(settings.redis_url), settings.job_ttl_s)


# --- refusals --------------------------------------------------------------------------------


def test_feedback_on_another_clients_job_is_a_job_that_does_not_exist(watched: str) -> None:
    job = _predict_labelled(watched, class_entries({"cat": PHOTOS["cat"]}, 1, seed=31))[0]
    assert _error(_feedback(watched, bob, job.job_id, ["cat"])) == (404, "job_not_found")
    assert _error(_feedback(watched, bob, "0" * 32, ["cat"])) == (404, "job_not_found")


def test_feedback_on_a_job_that_has_not_succeeded_is_a_conflict(
    watched: str, job_store: JobStore, cat_jpeg: bytes
) -> None:
    job_id = new_job_id()  # a queued job no worker will get a message for
    job_store.create_predict_job(
        job_id,
        [cat_jpeg],
        model_id("alice", MODEL),
        1,
        3,
        client="alice",
        deadline_s=3600,
        check_after_s=3600,
    )
    try:
        queued = _feedback(watched, alice, job_id, ["cat"])
        assert _error(queued) == (409, "job_not_succeeded")
        assert queued.json()["error"]["details"]["status"] == "queued"
        assert job_store.mark_running([job_id]) == [True]
        running = _feedback(watched, alice, job_id, ["cat"])
        assert _error(running) == (409, "job_not_succeeded")
        assert running.json()["error"]["details"]["status"] == "running"
    finally:
        job_store.mark_canceled(job_id)
    canceled = _feedback(watched, alice, job_id, ["cat"])
    assert _error(canceled) == (409, "job_not_succeeded")
    assert canceled.json()["error"]["details"]["status"] == "canceled"


def test_feedback_with_wrong_labels_is_a_validation_error_naming_the_image(watched: str) -> None:
    entries = class_entries({"cat": PHOTOS["cat"], "rocket": PHOTOS["rocket"]}, 2, seed=32)
    job = _predict_labelled(watched, entries)[0]
    assert len(job.truths) == 4
    unknown = _feedback(watched, alice, job.job_id, ["cat", None, "astronaut", "rocket"])
    assert _error(unknown) == (422, "validation_error")
    details = unknown.json()["error"]["details"]
    assert list(details["labels"]) == ["2"] and "astronaut" in details["labels"]["2"][0]
    for labels in (["cat"], ["cat", "cat", "rocket", "rocket", "rocket"]):
        wrong_length = _feedback(watched, alice, job.job_id, labels)
        assert _error(wrong_length) == (422, "validation_error")
        assert "labels" in wrong_length.json()["error"]["details"]
    assert _error(_feedback(watched, alice, job.job_id, [])) == (422, "validation_error")
    assert alice.post(f"{watched}/jobs/{job.job_id}/feedback", json={}).status_code == 422
    # nothing of the refused requests was stored
    entry = _monitoring(watched, 4)
    assert entry["predictions"] == 4 and entry["feedback"]["count"] == 0


def test_feedback_on_a_job_that_is_not_a_prediction_is_a_bad_request(
    watched: str, finetune_job_id: str
) -> None:
    assert _error(_feedback(watched, alice, finetune_job_id, ["cat"])) == (400, "invalid_request")


def test_adding_to_the_dataset_needs_retained_images(watched: str) -> None:
    job = _predict_labelled(watched, class_entries({"coffee": PHOTOS["coffee"]}, 1, seed=33))[0]
    refused = _feedback(watched, alice, job.job_id, ["coffee"], add_to_dataset=True)
    assert _error(refused) == (409, "images_not_retained")
    assert _monitoring(watched, 1)["feedback"]["count"] == 0  # refused means not stored
    versions = alice.get(f"{watched}/datasets/{MODEL}").json()["versions"]
    assert [v["version"] for v in versions] == [1]


def test_adding_a_shared_models_predictions_to_its_dataset_is_forbidden(
    watched: str, cat_jpeg: bytes
) -> None:
    job = _succeeded(watched, _submit(watched, bob, [cat_jpeg], model="imagenet"))
    guess = _top1(job)[0]
    refused = _feedback(watched, bob, job["id"], [guess], add_to_dataset=True)
    assert _error(refused) == (403, "forbidden")
    kept = bob.post(f"{watched}/jobs/predict", json={"images": _b64([cat_jpeg]), "retain": True})
    assert _error(kept) == (403, "forbidden")  # nor may bob keep its images
    plain = _feedback(watched, bob, job["id"], [guess])
    assert plain.status_code == 200, plain.text
    assert plain.json()["correct"] == [True]


# --- feedback counts once; retained images feed the dataset ------------------------------------


def test_feedback_sent_again_replaces_the_label_and_counts_once(watched: str) -> None:
    entries = class_entries(PHOTOS, 1, seed=34)  # cat, coffee, rocket
    job = _predict_labelled(watched, entries)[0]
    before = _feedback_totals(watched)
    first = _feedback(watched, alice, job.job_id, job.truths)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "id": job.job_id,
        "model": MODEL,
        "version": 1,
        "labels": job.truths,
        "correct": [t == p for t, p in zip(job.truths, job.predicted, strict=True)],
    }
    again = _feedback(watched, alice, job.job_id, job.truths)
    assert again.json()["labels"] == job.truths
    changed = [job.truths[0], None, "cat"]  # None keeps what was sent before
    third = _feedback(watched, alice, job.job_id, changed)
    assert third.json()["labels"] == [job.truths[0], job.truths[1], "cat"]

    window = _monitoring(watched, 3)
    assert window["feedback"]["count"] == 3
    now_labels = [job.truths[0], job.truths[1], "cat"]
    assert window["feedback"]["correct"] == sum(
        t == p for t, p in zip(now_labels, job.predicted, strict=True)
    )
    after = _feedback_totals(watched)
    first_correct = sum(t == p for t, p in zip(job.truths, job.predicted, strict=True))
    assert after["correct"] - before["correct"] == first_correct  # the first labels, once
    assert after["incorrect"] - before["incorrect"] == 3 - first_correct


def test_feedback_on_retained_images_adds_them_to_the_models_dataset(watched: str) -> None:
    entries = class_entries(PHOTOS, 2, seed=35)
    job = _predict_labelled(watched, entries, retain=True)[0]
    answer = _feedback(watched, alice, job.job_id, job.truths, add_to_dataset=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["dataset"] == {"name": MODEL, "version": 2, "added": 6}

    dataset = alice.get(f"{watched}/datasets/{MODEL}").json()
    latest = next(v for v in dataset["versions"] if v["version"] == 2)
    assert (latest["source"], latest["parent"], latest["images"]) == ("feedback", 1, 120 + 6)
    page = alice.get(f"{watched}/datasets/{MODEL}/versions/2", params={"limit": 1000}).json()
    labels = {item["hash"]: item["label"] for item in page["items"]}
    sent = {image_hash(image): name.split("/")[0] for name, image in entries.items()}
    assert {image: labels.get(image) for image in sent} == sent
    assert _monitoring(watched, 6)["feedback"]["count"] == 6


# --- monitoring ------------------------------------------------------------------------------


def test_a_window_of_no_predictions_is_empty_not_the_whole_list(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    model = model_id("nobody", "unwatched")
    key = redis_keys.monitor_window(model, 1)
    client.delete(key)
    client.lpush(key, *(window_entry(f"job{i}", 0, "cat", 0.9, 1.0e9) for i in range(3)))
    log = MonitorLog(client, settings.job_ttl_s)
    assert [entry.job_id for entry in log.window(model, 1, 2)] == ["job2", "job1"]
    assert log.window(model, 1, 0) == []  # IMGQ_MONITOR_WINDOW=0 (off) caps a request at 0
    client.delete(key)


def test_only_the_owner_and_admins_read_a_versions_monitoring(watched: str) -> None:
    url = f"{watched}/models/{MODEL}/versions/1/monitoring"
    assert _error(bob.get(url, params={"owner": "alice"})) == (404, "model_not_found")
    as_admin = http.get(url, params={"owner": "alice", "window": 5})
    assert as_admin.status_code == 200, as_admin.text
    assert (as_admin.json()["model"], as_admin.json()["window"]) == (MODEL, 5)
    assert _error(alice.get(f"{watched}/models/{MODEL}/versions/9/monitoring"))[0] == 404
    assert _error(alice.get(url, params={"window": 0})) == (422, "validation_error")


def test_unseen_classes_drift_and_feedback_accuracy_is_what_the_labels_say(
    watched: str, httpserver: HTTPServer
) -> None:
    base = watched
    seen = _predict_labelled(base, class_entries(PHOTOS, IN_DISTRIBUTION_PER_CLASS, seed=41))
    count = sum(len(job.truths) for job in seen)
    assert count == 3 * IN_DISTRIBUTION_PER_CLASS >= 100
    calm = _monitoring(base, count)
    assert calm["predictions"] == count and calm["window"] == count
    assert calm["classes"]["drifted"] is False, calm["classes"]
    assert calm["confidence"]["drifted"] is False, calm["confidence"]
    assert calm["drifted"] is False
    assert calm["classes"]["observed"] == dict(
        sorted(Counter(p for job in seen for p in job.predicted).items())
    )
    assert set(calm["classes"]["reference"]) == set(CLASSES)
    assert calm["test_accuracy"] is not None

    before = _feedback_totals(base)
    for job in seen:
        sent = _feedback(base, alice, job.job_id, job.truths)
        assert sent.status_code == 200, sent.text
    pairs = [(t, p) for job in seen for t, p in zip(job.truths, job.predicted, strict=True)]
    correct = sum(t == p for t, p in pairs)
    feedback = _monitoring(base, count)["feedback"]
    assert (feedback["count"], feedback["correct"]) == (count, correct)
    assert feedback["accuracy"] == correct / count
    assert feedback["per_class"] == {
        label: {
            "count": sum(t == label for t, _ in pairs),
            "correct": sum(t == p == label for t, p in pairs),
            "accuracy": sum(t == p == label for t, p in pairs) / sum(t == label for t, _ in pairs),
        }
        for label in CLASSES
    }
    after = _feedback_totals(base)
    assert (after["correct"] - before["correct"], after["incorrect"] - before["incorrect"]) == (
        correct,
        count - correct,
    )
    assert _drift_events(base) == []

    receiver = Receiver()
    httpserver.expect_request("/drift", method="POST").respond_with_handler(receiver)
    patched = alice.request(
        "PATCH", f"{base}/models/{MODEL}", json={"callback_url": httpserver.url_for("/drift")}
    )
    assert patched.status_code == 200, patched.text

    unseen = _predict_labelled(base, class_entries(MORE_PHOTOS, UNSEEN_PER_CLASS, seed=42))
    unseen_count = sum(len(job.truths) for job in unseen)
    drifted = _monitoring(base, unseen_count)
    assert drifted["predictions"] == unseen_count
    assert drifted["drifted"] is True
    assert True in (drifted["classes"]["drifted"], drifted["confidence"]["drifted"]), drifted
    assert drifted["feedback"]["count"] == 0  # feedback covers the window's predictions only
    print(
        f"monitoring e2e: accuracy {correct}/{count}; p-values in distribution "
        f"{calm['classes']['p_value']:.3g} (classes) {calm['confidence']['p_value']:.3g} "
        f"(confidence), unseen {drifted['classes']['p_value']:.3g} "
        f"{drifted['confidence']['p_value']:.3g}; unseen predicted as "
        f"{drifted['classes']['observed']}"
    )

    wait_until(lambda: len(receiver.requests) >= 1, DRIFT_CHECK_WAIT_S, "drift webhook")
    events = _drift_events(base)
    assert len(events) == 1 and events[0]["version"] == 1 and events[0]["by"] == "system"
    headers, body = receiver.requests[0]
    secret = credentials.webhook_secrets["alice"]
    assert headers["Imgq-Signature"] == sign(secret, headers["Imgq-Timestamp"], body)
    assert headers["Imgq-Signature"] != sign("wrong", headers["Imgq-Timestamp"], body)
    document = json.loads(body)
    assert document["type"] == "model.drift_detected"
    assert (document["model"], document["owner"], document["version"]) == (MODEL, "alice", 1)
    assert headers["Imgq-Event-Id"].startswith(document["id"])
    assert document["monitoring"]["drifted"] is True

    time.sleep(3 * 2 + 1)  # three more drift checks: still drifted, not announced again
    assert len(receiver.requests) == 1
    assert len(_drift_events(base)) == 1

    samples = scrape_url(f"{base}/metrics")
    assert samples[_version_labels("imgq_drift_detected")] == 1.0
    whole = _monitoring(base, 1000)  # the periodic check's window (IMGQ_DRIFT_WINDOW)
    assert samples[_version_labels("imgq_online_accuracy")] == pytest.approx(
        whole["feedback"]["accuracy"]
    )
    assert samples[_version_labels("imgq_feedback_total", outcome="correct")] == after["correct"]
    assert any(
        samples.get(_version_labels("imgq_drift_p_value", test=test), 1.0) < 0.01
        for test in ("classes", "confidence")
    )
