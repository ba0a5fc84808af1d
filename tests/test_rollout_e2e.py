"""The retraining loop through the real gunicorn, prediction, training and webhooks workers.

Alice trains two models, ``loop-better`` and ``loop-worse`` (one fine-tune of each, module
fixtures). For each, predictions kept with ``retain=true`` and labelled with ``add_to_dataset``
grow the model's dataset; ``POST /models/<name>/retrain`` fine-tunes v2 on it (never activated,
its result says which images are new) and v2 goes into canary at 30 %. About 30 % of the
unpinned jobs go to v2 (a binomial bound), pinned jobs never do; labels then make the canary
clearly better (``loop-better``: promoted by the policy, with the numbers in the event log and
each rollout event sent as a signed webhook) or clearly worse (``loop-worse``: the canary is
ended, v1 stays active).

Then the housekeeping worker is killed mid-rollout: a policy with ``retrain_after_feedback``
starts a retrain from a webhooks worker of this test's own, which is killed (SIGKILL) while the
retrain trains; a fresh webhooks worker finds the finished retrain in Redis and puts it in
canary. Exactly one retrain and one canary are started, and once alice stops that canary the
policy does not retrain the same images again. While that test runs the session's
webhooks worker is paused (SIGSTOP, then SIGCONT), so that only the test's workers apply
policies and the session's worker comes back as it was for the tests after this file.

Bad requests come first, each a JSON 4xx (and a retrain with nothing new is a ``409`` unless
forced).
"""

from __future__ import annotations

import base64
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from pytest_httpserver import HTTPServer

from imgq import redis_keys
from imgq.local.supervisor import Service, process_tree, start_webhooks_worker, wait_until
from imgq.settings import Settings
from imgq.webhooks.signing import sign
from ml.dataset_store import image_hash
from ml.registry import model_id
from tests.support.datasets import PHOTOS, class_entries, make_dataset_zip, submit_finetune
from tests.support.http import credentials, http, wait_for_job
from tests.support.services import start_with_own_metrics
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e

alice, bob = http.as_client("alice"), http.as_client("bob")
BETTER, WORSE = "loop-better", "loop-worse"
CLASSES = sorted(PHOTOS)
TRAIN_TIMEOUT_S = 600
CANARY_TRAFFIC = 0.3
SPLIT_JOBS = 200  # unpinned one-image jobs whose split between v1 and v2 is checked
WORSE_JOBS = 80  # enough labels on both versions for a clear "worse"
PINNED_JOBS = 20
MIN_CANARY_FEEDBACK = 20
POLICY_WAIT_S = 30
ROLLOUT_CHECK_S = 2  # IMGQ_ROLLOUT_CHECK_INTERVAL_S of the session (tests/conftest.py)


# --- helpers ---------------------------------------------------------------------------------


def _b64(images: list[bytes]) -> list[str]:
    return [base64.b64encode(image).decode() for image in images]


def _error(response: requests.Response) -> tuple[int, str]:
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    return response.status_code, response.json()["error"]["code"]


def _submit(base: str, images: list[bytes], model: str, **fields: Any) -> str:
    body = {"images": _b64(images), "model": model, "top_k": 3, **fields}
    response = alice.post(f"{base}/jobs/predict", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _succeeded(base: str, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    job = wait_for_job(base, job_id, timeout_s=timeout_s)
    assert job["status"] == "succeeded", job
    return job


def _top1(job: dict[str, Any]) -> list[str]:
    return [str(top[0]["label"]) for top in job["result"]["predictions"]]


def _model(base: str, name: str) -> dict[str, Any]:
    response = alice.get(f"{base}/models/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _events(base: str, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The model's event log, oldest first (of one kind when ``kind`` says)."""
    response = alice.get(f"{base}/models/{name}/events", params={"limit": 100})
    assert response.status_code == 200, response.text
    events = list(reversed(response.json()["events"]))
    return [e for e in events if kind is None or e["event"] == kind]


def _feedback(base: str, job_id: str, labels: list[str | None], **fields: Any) -> dict[str, Any]:
    response = alice.post(f"{base}/jobs/{job_id}/feedback", json={"labels": labels, **fields})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _other_class(label: str) -> str:
    return next(name for name in CLASSES if name != label)


def _monitoring(base: str, name: str, version: int) -> dict[str, Any]:
    response = alice.get(f"{base}/models/{name}/versions/{version}/monitoring")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _put_policy(base: str, name: str, **policy: Any) -> dict[str, Any]:
    response = alice.request("PUT", f"{base}/models/{name}/policy", json=policy)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _drop_policy(base: str, name: str) -> None:
    response = alice.delete(f"{base}/models/{name}/policy")
    assert response.status_code == 204, response.text


def _train_v1(base: str, name: str, seed: int) -> str:
    response = submit_finetune(
        base, make_dataset_zip(per_class=12, seed=seed), caller=alice, model=name
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(base, response.json()["id"], timeout_s=TRAIN_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    assert (job["result"]["model"], job["result"]["version"]) == (name, 1)
    return base


def _finetune_jobs(base: str) -> set[str]:
    """Ids of alice's newest fine-tune jobs."""
    response = alice.get(f"{base}/jobs", params={"type": "finetune", "limit": 100})
    assert response.status_code == 200, response.text
    return {str(job["id"]) for job in response.json()["jobs"]}


def _wait_policy(what: str, check: Callable[[], bool], timeout_s: float = POLICY_WAIT_S) -> None:
    wait_until(check, timeout_s, what)


@dataclass(frozen=True)
class Grown:
    """Images labelled into a model's dataset from retained predictions."""

    dataset_version: int
    labels: dict[str, str]
    """Image hash -> the label sent."""


def _grow_dataset(base: str, name: str, per_class: int, seed: int) -> Grown:
    """Predict crops of the three classes with ``retain=true`` and label them with
    ``add_to_dataset``: a new ``feedback`` version of the model's dataset."""
    entries = class_entries(PHOTOS, per_class, seed=seed)
    job = _succeeded(base, _submit(base, list(entries.values()), name, retain=True))
    truths = [entry.split("/")[0] for entry in entries]
    answer = _feedback(base, job["id"], list(truths), add_to_dataset=True)
    dataset = answer["dataset"]
    assert (dataset["name"], dataset["added"]) == (name, len(entries)), answer
    labels = {
        image_hash(image): label for image, label in zip(entries.values(), truths, strict=True)
    }
    return Grown(int(dataset["version"]), labels)


def _retrain(base: str, name: str, grown: Grown, parent: int = 1) -> dict[str, Any]:
    """``POST /models/<name>/retrain`` and the succeeded job's result, checked: not activated,
    the new images named, the new version trained on the dataset version that holds them."""
    response = alice.post(f"{base}/models/{name}/retrain", json={})
    assert response.status_code == 202, response.text
    job = wait_for_job(base, response.json()["id"], timeout_s=TRAIN_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    assert job["type"] == "finetune"
    result = job["result"]
    assert result["activated"] is False, result
    assert "never activated on its own" in result["activation_reason"]
    new = result["retrain"]["new_images"]
    assert result["retrain"]["parent_version"] == parent
    assert new["per_source"].get("feedback") == len(grown.labels), new
    assert new["images"] >= len(grown.labels)
    for label in CLASSES:
        assert new["per_class"].get(label, 0) >= sum(v == label for v in grown.labels.values())
    assert result["dataset"]["version"] == grown.dataset_version

    described = _model(base, name)
    assert described["active_version"] == parent  # never activated on its own
    version = next(v for v in described["versions"] if v["version"] == result["version"])
    assert version["dataset"]["version"] == grown.dataset_version
    assert version["training"]["base"] == f"{name}:{parent}"
    page = alice.get(
        f"{base}/datasets/{name}/versions/{grown.dataset_version}", params={"limit": 1000}
    )
    assert page.status_code == 200, page.text
    held = {item["hash"]: item["label"] for item in page.json()["items"]}
    assert {image: held.get(image) for image in grown.labels} == grown.labels
    started = _events(base, name, "retrain_started")
    assert started[-1]["by"] == "alice" and started[-1]["details"]["job_id"] == job["id"]
    return dict(result)


def _start_canary(base: str, name: str, version: int) -> None:
    response = alice.post(
        f"{base}/models/{name}/versions/{version}/canary", json={"traffic": CANARY_TRAFFIC}
    )
    assert response.status_code == 200, response.text
    canary = response.json()["canary"]
    assert (canary["version"], canary["traffic"], canary["by"]) == (
        version,
        CANARY_TRAFFIC,
        "alice",
    )
    shown = _model(base, name)["canary"]
    assert (shown["version"], shown["traffic"]) == (version, CANARY_TRAFFIC)
    assert _events(base, name, "canary_started")[-1]["version"] == version


def _wait_canary_served(base: str, name: str, version: int, image: bytes) -> None:
    """Send unpinned jobs until one is served by the canary (its workers loaded it)."""

    def served() -> bool:
        return bool(_succeeded(base, _submit(base, [image], name))["result"]["version"] == version)

    wait_until(served, 90, f"a job of {name} served by the canary v{version}")


@dataclass(frozen=True)
class Served:
    """A one-image unpinned job and what served it."""

    job_id: str
    version: int
    top1: str


def _unpinned(base: str, name: str, count: int, seed: int) -> list[Served]:
    """``count`` one-image unpinned jobs (all submitted before any is waited for)."""
    images = list(class_entries(PHOTOS, math.ceil(count / len(CLASSES)), seed=seed).values())
    job_ids = [_submit(base, [images[i % len(images)]], name) for i in range(count)]
    served = []
    for job_id in job_ids:
        job = _succeeded(base, job_id)
        served.append(Served(job_id, int(job["result"]["version"]), _top1(job)[0]))
    return served


def _check_split(served: list[Served], canary: int) -> float:
    share = sum(s.version == canary for s in served) / len(served)
    bound = 4 * math.sqrt(CANARY_TRAFFIC * (1 - CANARY_TRAFFIC) / len(served))
    assert abs(share - CANARY_TRAFFIC) <= bound, (share, bound)
    assert {s.version for s in served} == {1, canary}
    return share


def _label(base: str, served: list[Served], right: int) -> None:
    """Label every job: right (its top-1) when version ``right`` served it, else wrong."""
    for job in served:
        truth = job.top1 if job.version == right else _other_class(job.top1)
        _feedback(base, job.job_id, [truth])


def _kill_tree(service: Service) -> None:
    """SIGKILL a worker and its pool processes, no chance to clean up, and reap it."""
    for pid in process_tree(service.process.pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.process.wait()
    service.stop()  # only closes its log now


def _rollout_state(client: redis.Redis, model: str) -> dict[str, str]:
    """What the model's rollout has under way in Redis (``workers.rollout``)."""
    found = client.hgetall(redis_keys.rollout_state(model))
    return {_text(key): _text(value) for key, value in found.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def _paused(service: Service, client: redis.Redis) -> Iterator[None]:
    """Stop a worker's processes (SIGSTOP) between two rollout checks, and resume them after."""
    wait_until(lambda: not client.exists(redis_keys.ROLLOUT_LEASE), 10, "no rollout check")
    pids = process_tree(service.process.pid)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def better(
    api_server: str, predict_worker: Service, train_worker: Service, webhooks_worker: Service
) -> str:
    """Alice's ``loop-better`` v1; yields the API's base URL."""
    return _train_v1(api_server, BETTER, seed=51)


@pytest.fixture(scope="module")
def worse(
    api_server: str, predict_worker: Service, train_worker: Service, webhooks_worker: Service
) -> str:
    """Alice's ``loop-worse`` v1; yields the API's base URL."""
    return _train_v1(api_server, WORSE, seed=52)


# --- bad requests ----------------------------------------------------------------------------


def test_bad_rollout_requests_are_json_4xx_each(worse: str) -> None:
    base = worse
    canary_url = f"{base}/models/{WORSE}/versions/1/canary"
    for traffic in (0, 0.6, -1):
        refused = alice.post(canary_url.replace("/1/", "/2/"), json={"traffic": traffic})
        assert _error(refused) == (422, "validation_error"), traffic
        assert "traffic" in refused.json()["error"]["details"]["json"]
    assert _error(alice.post(canary_url.replace("/1/", "/2/"), json={})) == (
        422,
        "validation_error",
    )
    active = alice.post(canary_url, json={"traffic": 0.2})
    assert _error(active) == (409, "version_is_active")
    missing = alice.post(canary_url.replace("/1/", "/9/"), json={"traffic": 0.2})
    assert _error(missing)[0] == 404
    assert _error(bob.post(canary_url, json={"traffic": 0.2})) == (404, "model_not_found")
    assert _error(alice.delete(canary_url)) == (404, "not_found")  # no canary runs

    retrain_url = f"{base}/models/{WORSE}/retrain"
    assert _error(bob.post(retrain_url, json={})) == (404, "model_not_found")
    assert _error(bob.post(retrain_url, json={"force": True})) == (404, "model_not_found")
    assert _error(alice.post(f"{base}/models/nosuch/retrain", json={}))[0] == 404
    assert _error(alice.post(retrain_url, json={"epochs": 0}))[0] == 422
    assert _error(alice.post(retrain_url, json={"dataset": "x"})) == (422, "validation_error")
    nothing = alice.post(retrain_url, json={})
    assert _error(nothing) == (409, "nothing_new")
    assert "force" in nothing.json()["error"]["message"]

    policy_url = f"{base}/models/{WORSE}/policy"
    for body in (
        {"promote": "auto", "retrain_every": 3},
        {"promote": "sometimes"},
        {"canary_traffic": 0.9},
        {"min_canary_feedback": 0},
    ):
        assert _error(alice.request("PUT", policy_url, json=body)) == (422, "validation_error")
    assert _error(bob.request("PUT", policy_url, json={})) == (404, "model_not_found")
    assert _error(alice.get(policy_url)) == (404, "not_found")  # none was set
    assert _model(base, WORSE)["policy"] is None

    forced = alice.post(retrain_url, json={"force": True})
    assert forced.status_code == 202, forced.text
    job_id = forced.json()["id"]
    canceled = alice.delete(f"{base}/jobs/{job_id}")  # its training is not needed here
    assert canceled.status_code in (200, 202), canceled.text
    job = wait_for_job(base, job_id, timeout_s=TRAIN_TIMEOUT_S)
    assert job["status"] == "canceled", job
    assert job["type"] == "finetune"
    assert [v["version"] for v in _model(base, WORSE)["versions"]] == [1]


# --- canary better: promoted -----------------------------------------------------------------


def test_a_better_canary_is_promoted_by_the_policy_with_its_numbers(
    better: str, httpserver: HTTPServer
) -> None:
    base = better
    receiver = Receiver()
    httpserver.expect_request("/rollout", method="POST").respond_with_handler(receiver)
    patched = alice.request(
        "PATCH", f"{base}/models/{BETTER}", json={"callback_url": httpserver.url_for("/rollout")}
    )
    assert patched.status_code == 200, patched.text
    grown = _grow_dataset(base, BETTER, per_class=3, seed=61)
    result = _retrain(base, BETTER, grown)
    canary = result["version"]
    assert canary == 2
    _start_canary(base, BETTER, canary)
    probe = class_entries({"cat": PHOTOS["cat"]}, 1, seed=62)["cat/000.jpg"]
    _wait_canary_served(base, BETTER, canary, probe)

    served = _unpinned(base, BETTER, SPLIT_JOBS, seed=63)
    share = _check_split(served, canary)
    pinned = [_submit(base, [probe], BETTER, version=1) for _ in range(PINNED_JOBS)]
    assert {_succeeded(base, job_id)["result"]["version"] for job_id in pinned} == {1}
    _label(base, served, right=canary)

    on_canary = sum(s.version == canary for s in served)
    for version in (1, canary):
        block = _monitoring(base, BETTER, version)["canary"]
        assert (block["version"], block["active_version"]) == (canary, 1)
        assert block["traffic"] == CANARY_TRAFFIC
        assert block["verdict"] == "better", block
        assert block["candidate"] == {"count": on_canary, "correct": on_canary, "accuracy": 1.0}
        assert block["active"]["count"] == len(served) - on_canary
        assert block["active"]["accuracy"] == 0.0
        assert block["interval"][0] > 0 and "two-proportion" in block["test"]
        assert set(block["drift"]) == {"active", "canary"}

    try:
        policy = _put_policy(
            base,
            BETTER,
            promote="auto",
            min_canary_feedback=MIN_CANARY_FEEDBACK,
            canary_traffic=CANARY_TRAFFIC,
        )
        assert policy["promote"] == "auto" and policy["retrain_after_feedback"] is None
        got = alice.get(f"{base}/models/{BETTER}/policy")
        assert got.status_code == 200 and got.json() == policy

        def promoted() -> bool:
            model = _model(base, BETTER)
            return model["active_version"] == canary and model["canary"] is None

        _wait_policy("the canary promoted", promoted)
    finally:
        _drop_policy(base, BETTER)
    events = _events(base, BETTER, "promoted")
    assert len(events) == 1, events
    event = events[0]
    assert (event["by"], event["version"]) == ("system", canary)
    assert "more accurate on live labels" in event["reason"], event
    assert "1.000 vs 0.000" in event["reason"] and "interval" in event["reason"]
    details = event["details"]
    assert details["verdict"] == "better"
    assert details["candidate"]["count"] == on_canary >= MIN_CANARY_FEEDBACK
    assert (details["candidate"]["accuracy"], details["active"]["accuracy"]) == (1.0, 0.0)
    assert details["difference"] == 1.0 and len(details["interval"]) == 2
    kinds = [e["event"] for e in _events(base, BETTER)]
    assert kinds.index("canary_started") < kinds.index("policy_changed") < kinds.index("promoted")

    # every rollout event went to the model's callback URL, signed
    wanted = ["model.retrain_started", "model.canary_started", "model.promoted"]
    wait_until(lambda: set(wanted) <= set(receiver.types()), 30, "the rollout webhooks")
    secret = credentials.webhook_secrets["alice"]
    for headers, body in receiver.requests:
        assert headers["Imgq-Signature"] == sign(secret, headers["Imgq-Timestamp"], body)
    documents = {doc["type"]: doc for doc in receiver.documents()}
    assert [t for t in receiver.types() if t in wanted] == wanted  # in the order they happened
    hook = documents["model.promoted"]
    assert (hook["model"], hook["owner"], hook["version"], hook["by"]) == (
        BETTER,
        "alice",
        canary,
        "system",
    )
    assert hook["reason"] == event["reason"] and hook["details"]["verdict"] == "better"
    unset = alice.request("PATCH", f"{base}/models/{BETTER}", json={"callback_url": None})
    assert unset.status_code == 200, unset.text

    # the prediction workers follow: unpinned jobs all go to the promoted version
    wait_until(
        lambda: all(s.version == canary for s in _unpinned(base, BETTER, 6, seed=64)),
        30,
        "unpinned jobs on the promoted version",
    )
    print(f"rollout e2e: canary share {share:.3f} of {len(served)} unpinned jobs")


# --- canary worse: ended ---------------------------------------------------------------------


def test_a_worse_canary_is_ended_by_the_policy_and_v1_stays_active(worse: str) -> None:
    base = worse
    grown = _grow_dataset(base, WORSE, per_class=3, seed=71)
    canary = _retrain(base, WORSE, grown)["version"]
    _start_canary(base, WORSE, canary)
    probe = class_entries({"coffee": PHOTOS["coffee"]}, 1, seed=72)["coffee/000.jpg"]
    _wait_canary_served(base, WORSE, canary, probe)

    served = _unpinned(base, WORSE, WORSE_JOBS, seed=73)
    assert {s.version for s in served} == {1, canary}
    _label(base, served, right=1)
    block = _monitoring(base, WORSE, 1)["canary"]
    assert block["verdict"] == "worse", block
    assert (block["candidate"]["accuracy"], block["active"]["accuracy"]) == (0.0, 1.0)
    assert block["candidate"]["count"] >= 5

    try:
        _put_policy(base, WORSE, promote="auto", min_canary_feedback=5)

        def ended() -> bool:
            return _model(base, WORSE)["canary"] is None

        _wait_policy("the canary ended", ended)
    finally:
        _drop_policy(base, WORSE)
    model = _model(base, WORSE)
    assert model["active_version"] == 1
    assert canary in [v["version"] for v in model["versions"]]  # ended, not deleted
    events = _events(base, WORSE, "canary_ended")
    assert len(events) == 1, events
    assert (events[0]["by"], events[0]["version"]) == ("system", canary)
    assert "less accurate on live labels" in events[0]["reason"], events[0]
    assert events[0]["details"]["verdict"] == "worse"
    assert _events(base, WORSE, "promoted") == []
    wait_until(
        lambda: all(s.version == 1 for s in _unpinned(base, WORSE, 6, seed=74)),
        30,
        "unpinned jobs back on v1",
    )


# --- the housekeeping worker killed mid-rollout ----------------------------------------------


def test_killing_the_housekeeping_worker_mid_rollout_repeats_nothing(
    worse: str,
    settings: Settings,
    service_dir: Path,
    webhooks_worker: Service,
    redis_client: redis.Redis,
) -> None:
    base = worse
    model = model_id("alice", WORSE)
    active = _model(base, WORSE)["active_version"]
    existing = {v["version"] for v in _model(base, WORSE)["versions"]}
    grown = _grow_dataset(base, WORSE, per_class=2, seed=81)
    with _paused(webhooks_worker, redis_client):
        doomed = start_with_own_metrics(start_webhooks_worker, settings, service_dir, "rollout-a")
        fresh: Service | None = None
        try:
            jobs_before = _finetune_jobs(base)
            policy_set_at = time.time()
            _put_policy(base, WORSE, retrain_after_feedback=len(grown.labels), canary_traffic=0.2)

            def retrain_started() -> bool:
                found = _events(base, WORSE, "retrain_started")
                return bool(found) and found[-1]["at"] >= policy_set_at

            _wait_policy("the policy's retrain", retrain_started)
            started = _events(base, WORSE, "retrain_started")[-1]
            assert started["by"] == "system" and "labelled images" in started["reason"]
            job_id = started["details"]["job_id"]
            wait_until(
                lambda: http.get(f"{base}/jobs/{job_id}").json()["status"] == "running",
                120,
                "the retrain running",
            )
            _kill_tree(doomed)  # mid-training, with the retrain claimed in Redis
            state = _rollout_state(redis_client, model)
            assert state.get("retrain_job") == job_id, state

            retrained = wait_for_job(base, job_id, timeout_s=TRAIN_TIMEOUT_S)
            assert retrained["status"] == "succeeded", retrained
            new_version = retrained["result"]["version"]
            assert new_version not in existing and retrained["result"]["activated"] is False
            time.sleep(2 * ROLLOUT_CHECK_S)
            assert _model(base, WORSE)["canary"] is None  # nobody followed it while down

            fresh = start_with_own_metrics(
                start_webhooks_worker, settings, service_dir, "rollout-b"
            )

            def in_canary() -> bool:
                return bool((_model(base, WORSE)["canary"] or {}).get("version") == new_version)

            _wait_policy("the retrain put in canary by the fresh worker", in_canary)
            time.sleep(3 * ROLLOUT_CHECK_S)  # more checks: nothing more is due
            model_doc = _model(base, WORSE)
            assert model_doc["active_version"] == active
            assert (model_doc["canary"]["version"], model_doc["canary"]["by"]) == (
                new_version,
                "system",
            )
            state = _rollout_state(redis_client, model)
            assert not {"retrain_job", "sent", "pending"} & set(state), state

            # alice stops the canary; the policy has nothing new to train on: no retrain again
            stop = alice.delete(f"{base}/models/{WORSE}/versions/{new_version}/canary")
            assert stop.status_code == 204, stop.text
            time.sleep(3 * ROLLOUT_CHECK_S)
        finally:
            try:
                _drop_policy(base, WORSE)
            finally:
                if fresh is not None:
                    fresh.stop()
                if doomed.alive():
                    _kill_tree(doomed)

    after = [e for e in _events(base, WORSE) if e["at"] >= policy_set_at]
    by_system = [e for e in after if e["by"] == "system"]
    assert [e["event"] for e in by_system] == ["retrain_started", "canary_started"], after
    canary_started = by_system[1]
    assert canary_started["version"] == new_version
    assert canary_started["details"]["job_id"] == job_id
    assert canary_started["details"]["traffic"] == 0.2
    assert _finetune_jobs(base) - jobs_before == {job_id}
    model_doc = _model(base, WORSE)
    assert (model_doc["active_version"], model_doc["canary"]) == (active, None)
    assert {v["version"] for v in model_doc["versions"]} == existing | {new_version}
    ended = _events(base, WORSE, "canary_ended")[-1]
    assert (ended["by"], ended["version"], ended["reason"]) == ("alice", new_version, "stopped")
