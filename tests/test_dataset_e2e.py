"""Stored datasets end to end: they grow, train models, are edited, swept and kept private.

Through the real gunicorn, training worker and prediction worker. Alice fine-tunes ``grow`` on
three classes, then appends two new classes alone (with two images she had sent before) and gets
a version that predicts all five. She stores the dataset ``shelf`` with an ingest job, trains
``fromshelf`` on ``shelf:1`` without an upload, then deletes and purges images of it; the sweep
(run here, on the store the services share) never removes a file a version still holds. Bob
reaches none of her datasets. Three fine-tunes in all, shared by module fixtures. A dataset's
limits (images in a version, bytes on the store) are checked on the Flask test client instead,
whose app can have settings of its own; those two tests need only the session's Redis.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from api.app import create_app
from api.uploads import check_upload
from imgq.errors import DatasetLimitExceeded
from imgq.local.supervisor import Service
from imgq.settings import Settings
from ml.archive import ArchiveLimits
from ml.dataset_ingest import DataMode, DatasetLimits, IngestRequest, ingest_archive
from ml.dataset_store import DatasetStore, image_hash
from ml.preprocess import ImageLimits
from ml.registry import model_id
from tests.support.datasets import (
    FINETUNE_FORM,
    MORE_PHOTOS,
    PHOTOS,
    class_entries,
    submit_finetune,
    zip_archive,
)
from tests.support.http import Http, credentials, http, wait_for_job

e2e = pytest.mark.e2e
"""Every test here but the limits' goes through the session's real servers."""

alice, bob = http.as_client("alice"), http.as_client("bob")
FIRST_CLASSES = sorted(PHOTOS)
ALL_CLASSES = sorted({**PHOTOS, **MORE_PHOTOS})
TRAIN_TIMEOUT_S = 600
INGEST_TIMEOUT_S = 60


# --- helpers ---------------------------------------------------------------------------------


def _error_code(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def _finished(base: str, response: requests.Response, timeout_s: float) -> dict[str, Any]:
    """The job a ``202`` answer accepted, once it succeeded."""
    assert response.status_code == 202, response.text
    job = wait_for_job(base, response.json()["id"], timeout_s=timeout_s)
    assert job["status"] == "succeeded", job
    return job


def _ingest(
    base: str, caller: Http, name: str, entries: dict[str, bytes], **fields: str
) -> requests.Response:
    """``POST /datasets/<name>/versions`` with ``entries`` zipped as the ``dataset`` part."""
    return caller.post(
        f"{base}/datasets/{name}/versions",
        data=fields,
        files={"dataset": ("upload.zip", zip_archive(entries), "application/zip")},
    )


def _version_items(
    caller: Http, base: str, name: str, version: int, **query: str
) -> list[dict[str, Any]]:
    """Every image of a dataset version, read page by page (small pages, to page for real)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "7", **query, **({"cursor": cursor} if cursor else {})}
        page = caller.get(f"{base}/datasets/{name}/versions/{version}", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def _splits(caller: Http, base: str, name: str, version: int) -> dict[str, str]:
    """Image hash -> split of every image of a version."""
    return {item["hash"]: item["split"] for item in _version_items(caller, base, name, version)}


def _predict(base: str, caller: Http, images: list[bytes], **fields: Any) -> dict[str, Any]:
    body = {"images": [base64.b64encode(image).decode() for image in images], **fields}
    response = caller.post(f"{base}/jobs/predict", json=body)
    return _finished(base, response, 120)


def _predict_until_version(
    base: str, version: int, images: list[bytes], timeout_s: float = 60, **fields: Any
) -> dict[str, Any]:
    """Alice's predict job's result, repeated until the workers serve ``version`` (or time
    runs out: the last result, for the caller's assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result: dict[str, Any] = _predict(base, alice, images, **fields)["result"]
        if result["version"] == version or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def _by_hash(entries: dict[str, bytes]) -> dict[str, bytes]:
    return {image_hash(image): image for image in entries.values()}


# --- 1. a dataset that grows: three classes, then two more appended alone ---------------------


@dataclass(frozen=True)
class Grown:
    """Alice's ``grow``: the two fine-tune jobs, and the entries of the two uploads."""

    base: str
    first: dict[str, Any]
    second: dict[str, Any]
    first_upload: dict[str, bytes]
    appended: dict[str, bytes]
    duplicates: dict[str, bytes]


@pytest.fixture(scope="module")
def grown(api_server: str, predict_worker: Service, train_worker: Service) -> Grown:
    """``grow`` v1 on cat, coffee and rocket; then v2 from an append of astronaut and cells
    alone, plus two images of v1's upload again (same bytes, same labels)."""
    first_upload = class_entries(PHOTOS, per_class=10, seed=11)
    first = _finished(
        api_server,
        submit_finetune(api_server, zip_archive(first_upload), caller=alice, model="grow"),
        TRAIN_TIMEOUT_S,
    )
    appended = class_entries(MORE_PHOTOS, per_class=10, seed=12)
    duplicates = {
        "cat/again.jpg": first_upload["cat/000.jpg"],
        "rocket/again.jpg": first_upload["rocket/003.jpg"],
    }
    second = _finished(
        api_server,
        submit_finetune(
            api_server,
            zip_archive({**appended, **duplicates}),
            caller=alice,
            model="grow",
            data_mode="append",
        ),
        TRAIN_TIMEOUT_S,
    )
    return Grown(api_server, first, second, first_upload, appended, duplicates)


@e2e
def test_an_append_of_two_new_classes_alone_makes_a_version_that_predicts_all_five(
    grown: Grown,
) -> None:
    base, first, second = grown.base, grown.first["result"], grown.second["result"]
    assert (first["owner"], first["version"], first["activated"]) == ("alice", 1, True)
    assert first["dataset"]["version"] == 1 and sorted(first["dataset"]["classes"]) == (
        FIRST_CLASSES
    )
    assert second["version"] == 2
    dataset = second["dataset"]
    assert (dataset["name"], dataset["version"]) == ("grow", 2)
    assert sorted(dataset["classes"]) == ALL_CLASSES
    assert dataset["images"] == len(grown.first_upload) + len(grown.appended)
    assert dataset["added"] == len(grown.appended)  # every new unique image
    assert dataset["duplicated"] == len(grown.duplicates)
    assert (dataset["relabelled"], dataset["removed"], dataset["skipped"]) == (0, 0, 0)
    assert isinstance(second["activation_reason"], str) and second["activation_reason"]
    print(f"append gate: activated={second['activated']}: {second['activation_reason']}")

    model = alice.get(f"{base}/models/grow").json()
    versions = {v["version"]: v for v in model["versions"]}
    assert sorted(versions[1]["labels"]) == FIRST_CLASSES
    assert sorted(versions[2]["labels"]) == ALL_CLASSES
    assert versions[2]["dataset"] == {
        "name": "grow",
        "version": 2,
        "fingerprint": dataset["fingerprint"],
    }
    assert model["active_version"] == (2 if second["activated"] else 1)

    # Activated, version 2 is what new jobs get once the workers swapped (within moments);
    # a candidate is asked for by number.
    pinned = {} if second["activated"] else {"version": 2}
    images = [grown.appended["astronaut/000.jpg"], grown.first_upload["coffee/001.jpg"]]
    predicted = _predict_until_version(base, 2, images, model="grow", top_k=5, **pinned)
    assert (predicted["model"], predicted["version"]) == ("grow", 2)
    assert len(predicted["predictions"]) == len(images)
    for ranked in predicted["predictions"]:
        assert sorted(entry["label"] for entry in ranked) == ALL_CLASSES


@e2e
def test_the_grown_dataset_lists_both_versions_and_keeps_every_split(grown: Grown) -> None:
    base = grown.base
    described = alice.get(f"{base}/datasets/grow")
    assert described.status_code == 200, described.text
    body = described.json()
    assert (body["name"], body["owner"]) == ("grow", "alice")
    versions = body["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["source"] for v in versions] == ["upload", "upload"]
    assert [v["parent"] for v in versions] == [None, 1]
    assert [v["by"] for v in versions] == ["alice", "alice"]
    assert sorted(versions[0]["classes"]) == FIRST_CLASSES
    assert sorted(versions[1]["classes"]) == ALL_CLASSES
    assert versions[1]["fingerprint"] == grown.second["result"]["dataset"]["fingerprint"]
    for counts in versions[1]["classes"].values():
        assert min(counts.values()) >= 1  # every class in every split

    tested_before = {item["hash"] for item in _version_items(alice, base, "grow", 1, split="test")}
    tested_after = {item["hash"] for item in _version_items(alice, base, "grow", 2, split="test")}
    assert tested_before and tested_before <= tested_after
    before, after = _splits(alice, base, "grow", 1), _splits(alice, base, "grow", 2)
    assert set(before) == set(_by_hash(grown.first_upload))
    assert set(after) == set(before) | set(_by_hash(grown.appended))
    assert {image: after[image] for image in before} == before  # no image changed its split


# --- 2. training on a stored version, deleting and purging images, the sweep -----------------


@dataclass(frozen=True)
class Shelf:
    """Alice's dataset ``shelf`` (one ingested version) and ``fromshelf``, trained on it."""

    base: str
    upload: dict[str, bytes]
    ingest: dict[str, Any]
    finetune: requests.Response
    trained: dict[str, Any]


@pytest.fixture(scope="module")
def shelf(api_server: str, train_worker: Service) -> Shelf:
    """``shelf`` v1 from an ingest job; then a fine-tune of ``fromshelf`` on ``shelf:1`` sent
    as multipart form fields alone, no file part."""
    upload = class_entries(PHOTOS, per_class=8, seed=21)
    ingest = _finished(api_server, _ingest(api_server, alice, "shelf", upload), INGEST_TIMEOUT_S)
    fields = {**FINETUNE_FORM, "model": "fromshelf", "dataset_version": "shelf:1"}
    response = alice.post(
        f"{api_server}/jobs/finetune",
        files={key: (None, value) for key, value in fields.items()},
    )
    trained = _finished(api_server, response, TRAIN_TIMEOUT_S)
    return Shelf(api_server, upload, ingest, response, trained)


@e2e
def test_a_stored_version_trains_a_model_without_an_upload(shelf: Shelf) -> None:
    sent = shelf.finetune.request.headers["Content-Type"]
    assert isinstance(sent, str) and sent.startswith("multipart/form-data; boundary=")
    assert b'filename="' not in (shelf.finetune.request.body or b"")  # fields, no file part
    ingested = shelf.ingest["result"]
    assert ingested["version"] == 1
    result = shelf.trained["result"]
    assert (result["model"], result["owner"], result["version"]) == ("fromshelf", "alice", 1)
    assert result["dataset"]["name"] == "shelf" and result["dataset"]["version"] == 1
    assert result["dataset"]["fingerprint"] == ingested["fingerprint"]
    assert result["dataset"]["images"] == len(shelf.upload)
    assert result["dataset"]["added"] == 0  # nothing was uploaded
    model = alice.get(f"{shelf.base}/models/fromshelf").json()
    assert model["versions"][0]["dataset"] == {
        "name": "shelf",
        "version": 1,
        "fingerprint": ingested["fingerprint"],
    }
    assert sorted(model["versions"][0]["labels"]) == FIRST_CLASSES


@e2e
def test_deleted_images_stay_until_no_version_holds_them_and_purged_ones_go_at_once(
    shelf: Shelf, settings: Settings
) -> None:
    base, images = shelf.base, _by_hash(shelf.upload)
    dataset_url = f"{base}/datasets/shelf"
    store, dataset = DatasetStore(settings.model_store), model_id("alice", "shelf")
    first = _splits(alice, base, "shelf", 1)
    deleted, purged = sorted(first)[:2]

    edit = alice.delete(f"{dataset_url}/images/{deleted}")
    assert edit.status_code == 200, edit.text
    edited = edit.json()
    assert (edited["version"], edited["source"], edited["parent"]) == (2, "edit", 1)
    assert edited["images"] == len(images) - 1 and edited["purged"] is False
    assert set(_splits(alice, base, "shelf", 2)) == set(first) - {deleted}

    assert store.sweep(dataset, grace_s=0) == []  # version 1 still holds it
    kept = alice.get(f"{dataset_url}/images/{deleted}")
    assert kept.status_code == 200 and kept.content == images[deleted]
    for version in (1, 2):
        for image in _splits(alice, base, "shelf", version):
            assert store.has_image(dataset, image), (version, image)

    purge = alice.delete(f"{dataset_url}/images/{purged}", params={"purge": "true"})
    assert purge.status_code == 200, purge.text
    assert (purge.json()["version"], purge.json()["purged"]) == (3, True)
    assert _error_code(alice.get(f"{dataset_url}/images/{purged}")) == (410, "image_purged")
    for version in (1, 2):
        listed = {i["hash"]: i["purged"] for i in _version_items(alice, base, "shelf", version)}
        assert listed[purged] is True
        assert not any(flag for image, flag in listed.items() if image != purged)
    assert purged not in _splits(alice, base, "shelf", 3)

    retired = alice.delete(f"{dataset_url}/versions/1")  # the only version holding `deleted`
    assert retired.status_code == 204, retired.text
    assert [v["version"] for v in alice.get(dataset_url).json()["versions"]] == [2, 3]
    assert store.sweep(dataset, grace_s=0, now=time.time() + 10) == [deleted]
    assert _error_code(alice.get(f"{dataset_url}/images/{deleted}")) == (404, "image_not_found")
    assert _error_code(alice.get(f"{dataset_url}/images/{purged}")) == (410, "image_purged")
    for version in (2, 3):
        for image in _splits(alice, base, "shelf", version):
            if image == purged:
                continue
            read = alice.get(f"{dataset_url}/images/{image}")
            assert read.status_code == 200 and read.content == images[image], (version, image)
    model = alice.get(f"{base}/models/fromshelf").json()
    assert model["versions"][0]["dataset"]["version"] == 1  # the model keeps its record


# --- 3. another client's datasets do not exist for Bob ---------------------------------------


def _cross_client_calls(base: str, name: str, image: str) -> list[tuple[str, str, dict[str, Any]]]:
    dataset = f"{base}/datasets/{name}"
    upload = zip_archive(class_entries(PHOTOS, per_class=5, seed=31))
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", dataset, {}),
        ("GET", f"{dataset}/versions/1", {}),
        ("GET", f"{dataset}/images/{image}", {}),
        ("PATCH", f"{dataset}/images/{image}", {"json": {"label": "cat"}}),
        ("DELETE", f"{dataset}/images/{image}", {}),
        ("DELETE", f"{dataset}/images/{image}", {"params": {"purge": "true"}}),
        ("DELETE", f"{dataset}/versions/1", {}),
        ("DELETE", dataset, {}),
    ]
    as_alice = [
        (method, url, {**kwargs, "params": {**kwargs.get("params", {}), "owner": "alice"}})
        for method, url, kwargs in calls
    ]
    ingest = {
        "data": {"owner": "alice", "data_mode": "append"},
        "files": {"dataset": ("upload.zip", upload, "application/zip")},
    }
    return [*calls, *as_alice, ("POST", f"{dataset}/versions", ingest)]


def _answers(caller: Http, base: str, name: str, image: str) -> list[tuple[int, str]]:
    answers = []
    for method, url, kwargs in _cross_client_calls(base, name, image):
        response = caller.request(method, url, **kwargs)
        answers.append((response.status_code, response.text.replace(name, "NAME")))
    return answers


@e2e
def test_another_clients_dataset_answers_exactly_like_no_dataset(grown: Grown) -> None:
    base = grown.base
    before = alice.get(f"{base}/datasets/grow").json()
    image = image_hash(grown.first_upload["cat/001.jpg"])
    answers = _answers(bob, base, "grow", image)
    assert answers == _answers(bob, base, "nosuchdataset", image)
    for status, text in answers:
        assert status == 404 and '"dataset_not_found"' in text, text
    assert "grow" not in [d["name"] for d in bob.get(f"{base}/datasets").json()]
    assert all(d["owner"] == "bob" for d in bob.get(f"{base}/datasets").json())
    assert bob.get(f"{base}/datasets", params={"owner": "alice"}).json() == []
    fields = {**FINETUNE_FORM, "model": "bobgrow", "dataset_version": "grow:1"}
    refused = bob.post(
        f"{base}/jobs/finetune", files={key: (None, value) for key, value in fields.items()}
    )
    assert _error_code(refused) == (404, "dataset_not_found")
    assert alice.get(f"{base}/datasets/grow").json() == before  # nothing of hers changed

    as_admin = http.get(f"{base}/datasets/grow", params={"owner": "alice"})
    assert as_admin.status_code == 200 and as_admin.json() == before
    listed = http.get(f"{base}/datasets", params={"owner": "alice"}).json()
    assert "grow" in [d["name"] for d in listed] and {d["owner"] for d in listed} == {"alice"}
    assert _error_code(http.get(f"{base}/datasets/grow")) == (404, "dataset_not_found")


# --- 4. the ingest endpoint ------------------------------------------------------------------


def _jobs_of_type(caller: Http, base: str, job_type: str) -> list[str]:
    listed = caller.get(f"{base}/jobs", params={"type": job_type, "limit": 100}).json()
    return [job["id"] for job in listed["jobs"]]


@e2e
def test_ingest_jobs_store_versions_and_uploads_that_cannot_make_one_are_refused(
    api_server: str, train_worker: Service, settings: Settings
) -> None:
    base = api_server
    two = {"cat": PHOTOS["cat"], "rocket": PHOTOS["rocket"]}
    upload = class_entries(two, per_class=6, seed=41)
    accepted = _ingest(base, alice, "fresh", upload, seed="7")
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["Location"] == f"/jobs/{accepted.json()['id']}"
    job = _finished(base, accepted, INGEST_TIMEOUT_S)
    assert job["type"] == "ingest"
    result = job["result"]
    assert (result["dataset"], result["owner"], result["version"]) == ("fresh", "alice", 1)
    assert result["images"] == len(upload) and sorted(result["classes"]) == ["cat", "rocket"]
    assert (result["added"], result["duplicated"], result["skipped"]) == (len(upload), 0, 0)

    new_class = class_entries({"astronaut": MORE_PHOTOS["astronaut"]}, per_class=6, seed=42)
    appended = _finished(
        base, _ingest(base, alice, "fresh", new_class, data_mode="append"), INGEST_TIMEOUT_S
    )["result"]
    assert appended["version"] == 2 and appended["images"] == len(upload) + len(new_class)
    assert sorted(appended["classes"]) == ["astronaut", "cat", "rocket"]
    assert (appended["added"], appended["duplicated"], appended["removed"]) == (6, 0, 0)
    versions = alice.get(f"{base}/datasets/fresh").json()["versions"]
    assert [(v["version"], v["parent"], v["source"]) for v in versions] == [
        (1, None, "upload"),
        (2, 1, "upload"),
    ]

    jobs_before = _jobs_of_type(alice, base, "ingest")
    one_class = _ingest(base, alice, "fresh", new_class)  # a replacement of one class
    assert _error_code(one_class) == (400, "invalid_dataset")
    minimum = settings.min_images_per_class
    short = class_entries({"cells": MORE_PHOTOS["cells"]}, per_class=minimum - 1, seed=43)
    too_few = _ingest(base, alice, "fresh", short, data_mode="append")
    assert _error_code(too_few) == (400, "invalid_dataset")
    assert too_few.json()["error"]["details"]["short"] == {"cells": minimum - 1}
    assert _jobs_of_type(alice, base, "ingest") == jobs_before  # no job for either
    assert [v["version"] for v in alice.get(f"{base}/datasets/fresh").json()["versions"]] == [1, 2]

    splits = {item["hash"]: item for item in _version_items(alice, base, "fresh", 2)}
    image = image_hash(upload["cat/002.jpg"])
    relabel = alice.request(
        "PATCH", f"{base}/datasets/fresh/images/{image}", json={"label": "rocket"}
    )
    assert relabel.status_code == 200, relabel.text
    edited = relabel.json()
    assert (edited["version"], edited["source"], edited["parent"]) == (3, "edit", 2)
    assert sum(edited["classes"]["cat"].values()) == 5
    assert sum(edited["classes"]["rocket"].values()) == 7
    after = {item["hash"]: item for item in _version_items(alice, base, "fresh", 3)}
    assert (after[image]["label"], after[image]["split"]) == ("rocket", splits[image]["split"])
    assert {h: i for h, i in after.items() if h != image} == {
        h: i for h, i in splits.items() if h != image
    }


# --- 5. dataset limits, on the test client ---------------------------------------------------

MAX_IMAGES = 12
KEPT = model_id("admin", "kept")


@dataclass(frozen=True)
class Limited:
    """A test-client app with limits of its own, on a store of its own (``store``) where the
    admin's ``kept`` has one version of 10 images (cat, coffee)."""

    store: DatasetStore
    uploads: Path
    make: Callable[..., FlaskClient]


@pytest.fixture
def limited(settings: Settings, tmp_path: Path) -> Iterator[Limited]:
    """``make(**settings)`` gives an admin's test client of an app with those settings."""
    store = DatasetStore(tmp_path / "models")
    archive = tmp_path / "kept.zip"
    two = {"cat": PHOTOS["cat"], "coffee": PHOTOS["coffee"]}
    archive.write_bytes(zip_archive(class_entries(two, per_class=5, seed=51)))
    request = IngestRequest(
        KEPT,
        archive,
        DataMode.REPLACE,
        0,
        "admin",
        {},
        settings.min_images_per_class,
        ArchiveLimits(10_000, 10**9, 200.0),
        ImageLimits(10**7, 10**8),
        DatasetLimits(10**6, 10**12),
    )
    assert ingest_archive(store, request, tmp_path)["images"] == 10
    with ExitStack() as clients:

        def make(**overrides: Any) -> FlaskClient:
            update = {"upload_dir": tmp_path / "uploads", "model_store": tmp_path / "models"}
            app = create_app(settings.model_copy(update={**update, **overrides}))
            client = clients.enter_context(app.test_client())
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {credentials.keys['admin']}"
            return client

        yield Limited(store, tmp_path / "uploads", make)


def _limited_post(
    client: FlaskClient, url: str, entries: dict[str, bytes], **fields: str
) -> tuple[int, dict[str, Any]]:
    form: dict[str, Any] = {**fields, "dataset": (io.BytesIO(zip_archive(entries)), "d.zip")}
    response = client.post(url, data=form, content_type="multipart/form-data")
    return response.status_code, response.get_json()


def _past_the_limit(
    client: FlaskClient, limited: Limited, cases: list[tuple[str, dict[str, bytes], dict[str, str]]]
) -> list[dict[str, Any]]:
    """Post each case, check it was refused with 413 and left nothing; return the details."""
    details = []
    for url, entries, fields in cases:
        status, body = _limited_post(client, url, entries, **fields)
        assert (status, body["error"]["code"]) == (413, "dataset_limit_exceeded"), (url, body)
        details.append(body["error"]["details"])
        assert not list(limited.uploads.glob("*"))  # the upload was removed again
    assert limited.store.versions(KEPT) == [1]
    assert limited.store.datasets() == [KEPT]
    return details


def _rockets(count: int, seed: int) -> dict[str, bytes]:
    return class_entries({"rocket": PHOTOS["rocket"]}, per_class=count, seed=seed)


def test_a_version_past_the_image_limit_is_refused_before_any_job(limited: Limited) -> None:
    client = limited.make(max_dataset_images=MAX_IMAGES)
    two = {"cat": PHOTOS["cat"], "coffee": PHOTOS["coffee"]}
    fourteen = class_entries(two, per_class=7, seed=52)
    details = _past_the_limit(
        client,
        limited,
        [
            ("/datasets/big/versions", fourteen, {}),
            ("/jobs/finetune", fourteen, {"model": "big"}),
            ("/datasets/kept/versions", _rockets(5, 53), {"data_mode": "append"}),
            ("/jobs/finetune", _rockets(5, 53), {"model": "kept", "data_mode": "append"}),
        ],
    )
    assert (
        details
        == [{"images": 14, "limit": MAX_IMAGES}] * 2 + [{"images": 15, "limit": MAX_IMAGES}] * 2
    )
    within = _limited_post(client, "/datasets/kept/versions", _rockets(1, 54), data_mode="append")
    assert (within[0], within[1]["error"]["code"]) == (400, "invalid_dataset")  # small, not big


def test_an_upload_past_the_store_byte_limit_is_refused_before_any_job(limited: Limited) -> None:
    stored = limited.store.storage_bytes(KEPT)
    client = limited.make(max_dataset_store_bytes=stored + 1000)
    details = _past_the_limit(
        client,
        limited,
        [
            ("/datasets/kept/versions", _rockets(5, 55), {"data_mode": "append"}),
            ("/jobs/finetune", _rockets(5, 55), {"model": "kept", "data_mode": "append"}),
        ],
    )
    for found in details:
        assert (found["bytes"], found["limit"]) == (stored, stored + 1000)
        assert found["upload_bytes"] > 1000


def test_images_the_dataset_holds_already_count_once_against_the_limits(
    limited: Limited, tmp_path: Path
) -> None:
    client = limited.make(max_dataset_images=MAX_IMAGES)
    two = {"cat": PHOTOS["cat"], "coffee": PHOTOS["coffee"]}
    held = dict(list(class_entries(two, per_class=5, seed=51).items())[:3])  # all in `kept`
    again, more = tmp_path / "again.zip", tmp_path / "more.zip"
    again.write_bytes(zip_archive(held))
    more.write_bytes(zip_archive({**held, **_rockets(5, 56)}))
    with client.application.test_request_context():
        check_upload(again, KEPT, DataMode.APPEND, 0)  # 13 files, but the version holds 10
        with pytest.raises(DatasetLimitExceeded) as refused:
            check_upload(more, KEPT, DataMode.APPEND, 0)
    assert refused.value.details == {"images": 15, "limit": MAX_IMAGES}  # 10 + 5 new
