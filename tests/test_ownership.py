"""Models belong to the client that trained them, through the real gunicorn and workers.

Alice trains ``ownpets``. To Bob it is exactly a model that does not exist, until an admin
shares it; then Bob may predict with it but not change it. Bob training his own ``ownpets``
makes a second model and leaves Alice's active version alone.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from imgq.local.supervisor import Service
from tests.support.datasets import cat_image, make_dataset_zip, submit_finetune
from tests.support.http import Http, http, wait_for_job

pytestmark = pytest.mark.e2e

alice, bob = http.as_client("alice"), http.as_client("bob")
CAT = base64.b64encode(cat_image()).decode()


def _train(base: str, caller: Http, model: str) -> dict[str, Any]:
    response = submit_finetune(
        base, make_dataset_zip(per_class=10, seed=5), caller=caller, model=model
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(base, response.json()["id"], timeout_s=600)
    assert job["status"] == "succeeded", job
    return dict(job["result"])


@pytest.fixture(scope="module")
def alices_model(api_server: str, predict_worker: Service, train_worker: Service) -> str:
    """Alice's ``ownpets`` v1; yields the API's base URL."""
    result = _train(api_server, alice, "ownpets")
    assert (result["model"], result["owner"], result["version"]) == ("ownpets", "alice", 1)
    return api_server


def _predict(base: str, caller: Http, **fields: str) -> requests.Response:
    return caller.post(f"{base}/jobs/predict", json={"images": [CAT], **fields})


def _cross_client_calls(base: str, name: str) -> list[tuple[str, str, dict[str, Any]]]:
    model = f"{base}/models/{name}"
    return [
        ("GET", model, {}),
        ("GET", model, {"params": {"owner": "alice"}}),
        ("POST", f"{model}/versions/1/activate", {}),
        ("GET", f"{model}/versions/1/exports", {}),
        ("POST", f"{model}/versions/1/exports", {"json": {"format": "tflite"}}),
        ("GET", f"{model}/versions/1/exports/tflite", {}),
        ("GET", f"{model}/versions/1/artifacts/evaluation.json", {}),
        ("POST", f"{base}/jobs/predict", {"json": {"images": [CAT], "model": name}}),
    ]


def _answers(caller: Http, base: str, name: str) -> list[tuple[int, Any]]:
    answers = []
    for method, url, kwargs in _cross_client_calls(base, name):
        response = caller.request(method, url, **kwargs)
        body = response.json()
        answers.append((response.status_code, str(body).replace(name, "NAME")))
    return answers


def test_another_clients_model_answers_exactly_like_no_model(alices_model: str) -> None:
    base = alices_model
    unknown = _answers(bob, base, "nosuchmodel")
    assert _answers(bob, base, "ownpets") == unknown
    assert {status for status, _ in unknown} == {404}
    assert "ownpets" not in [m["name"] for m in bob.get(f"{base}/models").json()]
    based_on = submit_finetune(
        base, make_dataset_zip(per_class=10, seed=5), caller=bob, model="mine", base="ownpets:1"
    )
    assert based_on.status_code == 404
    assert based_on.json()["error"]["code"] == "model_not_found"


def test_the_owner_and_admins_see_and_activate_the_model(alices_model: str) -> None:
    base = alices_model
    mine = alice.get(f"{base}/models/ownpets").json()
    assert (mine["owner"], mine["shared"], mine["active_version"]) == ("alice", False, 1)
    assert mine["storage_bytes"] > 10_000  # a trained version's model.keras and plots
    assert alice.post(f"{base}/models/ownpets/versions/1/activate").status_code == 200
    as_admin = http.get(f"{base}/models/ownpets", params={"owner": "alice"})
    assert as_admin.status_code == 200 and as_admin.json()["owner"] == "alice"
    activated = http.post(f"{base}/models/ownpets/versions/1/activate", params={"owner": "alice"})
    assert activated.status_code == 200
    assert http.get(f"{base}/models/ownpets").status_code == 404  # not the admin's own
    predicted = _predict(base, alice, model="ownpets")
    assert predicted.status_code == 202
    job = wait_for_job(base, predicted.json()["id"])
    assert job["status"] == "succeeded" and job["result"]["model"] == "ownpets", job


def test_a_shared_model_is_used_by_everyone_and_changed_only_by_its_owner(
    alices_model: str,
) -> None:
    base = alices_model
    share = http.request(
        "PATCH", f"{base}/models/ownpets", params={"owner": "alice"}, json={"shared": True}
    )
    assert share.status_code == 200 and share.json()["shared"] is True
    try:
        assert bob.get(f"{base}/models/ownpets").json()["owner"] == "alice"
        job = wait_for_job(base, _predict(base, bob, model="ownpets").json()["id"])
        assert job["status"] == "succeeded", job
        refused = bob.post(f"{base}/models/ownpets/versions/1/activate")
        assert refused.status_code == 403
        not_admin = bob.request("PATCH", f"{base}/models/ownpets", json={"shared": False})
        assert not_admin.status_code == 403
    finally:
        http.request(
            "PATCH", f"{base}/models/ownpets", params={"owner": "alice"}, json={"shared": False}
        )
    assert bob.get(f"{base}/models/ownpets").status_code == 404


def test_the_same_name_trained_by_another_client_is_another_model(alices_model: str) -> None:
    base = alices_model
    result = _train(base, bob, "ownpets")
    assert (result["owner"], result["version"]) == ("bob", 1)  # a new model, not alice's v2
    assert result["activated"]  # measured against nothing of alice's
    mine = alice.get(f"{base}/models/ownpets").json()
    assert (mine["owner"], [v["version"] for v in mine["versions"]]) == ("alice", [1])
    assert mine["active_version"] == 1
    assert bob.get(f"{base}/models/ownpets").json()["owner"] == "bob"
    owners = sorted(m["owner"] for m in http.get(f"{base}/models").json() if m["name"] == "ownpets")
    assert owners == ["alice", "bob"]


def test_the_built_in_and_default_names_are_reserved(alices_model: str) -> None:
    refused = submit_finetune(
        alices_model, make_dataset_zip(per_class=10, seed=5), caller=alice, model="imagenet"
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "reserved_model_name"


def test_only_the_owner_deletes_and_never_the_active_version(alices_model: str) -> None:
    base = alices_model
    assert bob.delete(f"{base}/models/ownpets", params={"owner": "alice"}).status_code == 404
    active = alice.delete(f"{base}/models/ownpets/versions/1")
    assert active.status_code == 409
    assert active.json()["error"]["code"] == "version_is_active"
    assert bob.delete(f"{base}/models/ownpets").status_code == 204  # his own (trained above)
    assert bob.get(f"{base}/models/ownpets").status_code == 404
    assert _predict(base, bob, model="ownpets").status_code == 404
    assert alice.get(f"{base}/models/ownpets").json()["active_version"] == 1


def test_the_event_log_says_who_did_what_newest_first(alices_model: str) -> None:
    base = alices_model
    url = f"{base}/models/ownpets/events"
    assert bob.get(url).status_code == 404
    log = alice.get(url, params={"limit": 100}).json()
    assert log["next_cursor"] is None
    happened = [(e["event"], e["by"], e["version"]) for e in reversed(log["events"])]
    assert happened[:2] == [("published", "alice", 1), ("activated", "system", 1)]
    assert ("activated", "alice", 1) in happened and ("activated", "admin", 1) in happened
    assert ("shared", "admin", None) in happened and ("unshared", "admin", None) in happened
    assert [e["at"] for e in log["events"]] == sorted(
        (e["at"] for e in log["events"]), reverse=True
    )
    first = alice.get(url, params={"limit": 2}).json()
    rest = alice.get(url, params={"limit": 100, "cursor": first["next_cursor"]}).json()
    assert first["events"] + rest["events"] == log["events"]
