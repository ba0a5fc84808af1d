"""Bad datasets and parameters are refused at upload with clear 4xx codes, touching nothing."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from imgq.jobs.store import JobStore
from imgq.redis_client import redis_client
from imgq.settings import Settings
from ml.registry import BUILTIN_MODEL_ID, ModelRegistry
from tests.support.datasets import zip_archive, zip_with_symlink
from tests.support.http import credentials
from tests.support.images import solid_image


def _png(colour: tuple[int, int, int]) -> bytes:
    return solid_image(colour, "PNG")


def _classes(counts: dict[str, int]) -> dict[str, bytes]:
    return {
        f"{name}/{i}.png": _png((40 * i % 255, 90, 20))
        for name, n in counts.items()
        for i in range(n)
    }


@pytest.fixture
def client(settings: Settings, tmp_path: Path) -> Iterator[FlaskClient]:
    app = create_app(
        settings.model_copy(
            update={
                "upload_dir": tmp_path / "uploads",
                "model_store": tmp_path / "models",
                "min_images_per_class": 3,
                "max_dataset_ratio": 50.0,
            }
        )
    )
    with app.test_client() as test_client:
        test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {credentials.keys['admin']}"
        yield test_client


def _post(
    client: FlaskClient, archive: bytes, filename: str = "d.zip", **fields: str
) -> tuple[int, str]:
    form: dict[str, object] = {
        "model": "pets",
        **fields,
        "dataset": (io.BytesIO(archive), filename),
    }
    response = client.post("/jobs/finetune", data=form, content_type="multipart/form-data")
    body = response.get_json()
    return response.status_code, body["error"]["code"] if "error" in body else "accepted"


def _traversal_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in {**_classes({"a": 3, "b": 3}), "../evil.png": _png((1, 2, 3))}.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "filename", "expected"),
    [
        (
            zip_archive({"../evil/x.png": _png((1, 1, 1)), **_classes({"a": 3, "b": 3})}),
            "d.zip",
            (400, "invalid_archive"),
        ),
        (_traversal_tar(), "d.tar.gz", (400, "invalid_archive")),
        (
            zip_with_symlink(_classes({"a": 3, "b": 3}), "a/link.png"),
            "d.zip",
            (400, "invalid_archive"),
        ),
        (
            zip_archive({"a/zeros.png": b"\0" * 20_000_000, **_classes({"a": 3, "b": 3})}),
            "d.zip",
            (413, "archive_too_large"),
        ),
        (zip_archive(_classes({"only": 6})), "d.zip", (400, "invalid_dataset")),
        (
            zip_archive({**_classes({"a": 4, "b": 4}), "empty/readme.txt": b"no images"}),
            "d.zip",
            (400, "invalid_dataset"),
        ),
        (
            zip_archive({**_classes({"a": 4}), **_classes({"b": 1})}),
            "d.zip",
            (400, "invalid_dataset"),
        ),
        (zip_archive({"notes.txt": b"hello"}), "d.zip", (400, "invalid_dataset")),
        (b"not an archive at all", "d.zip", (400, "invalid_archive")),
        (zip_archive(_classes({"a": 3, "b": 3})), "d.rar", (400, "invalid_request")),
    ],
    ids=[
        "zip-traversal",
        "tar-traversal",
        "zip-symlink",
        "zip-bomb",
        "one-class",
        "empty-class",
        "too-few-images",
        "no-images",
        "not-an-archive",
        "wrong-suffix",
    ],
)
def test_bad_datasets_are_refused_and_leave_nothing_behind(
    client: FlaskClient, tmp_path: Path, archive: bytes, filename: str, expected: tuple[int, str]
) -> None:
    assert _post(client, archive, filename) == expected
    assert not list((tmp_path / "uploads").glob("*"))  # the upload was removed again
    assert ModelRegistry(tmp_path / "models").models() == [BUILTIN_MODEL_ID]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"epochs": "0"}, (422, "validation_error")),
        ({"epochs": "100000"}, (422, "validation_error")),
        ({"unfreeze": "1.5"}, (422, "validation_error")),
        ({"learning_rate": "-1"}, (422, "validation_error")),
        ({"batch_size": "lots"}, (422, "validation_error")),
        ({"base": "vgg99"}, (422, "validation_error")),
        ({"base": "nosuchmodel:3"}, (404, "model_not_found")),
        ({"model": "imagenet"}, (400, "reserved_model_name")),
        ({"model": "Bad Name!"}, (422, "validation_error")),
        ({"epochs": "automatic"}, (422, "validation_error")),
        ({"pooling": "max"}, (422, "validation_error")),
        ({"tta": "maybe"}, (422, "validation_error")),
        ({"label_smoothing": "0.9"}, (422, "validation_error")),
        ({"budget_s": "5"}, (422, "validation_error")),
        ({"teacher": "pets"}, (422, "validation_error")),
        ({"teacher": "nosuchmodel:1"}, (404, "model_not_found")),
        ({"distill_alpha": "2"}, (422, "validation_error")),
    ],
)
def test_absurd_training_parameters_are_refused(
    client: FlaskClient, fields: dict[str, str], expected: tuple[int, str]
) -> None:
    assert _post(client, zip_archive(_classes({"a": 3, "b": 3})), **fields) == expected


def test_auto_and_explicit_values_are_accepted_and_kept_for_the_job(
    client: FlaskClient, settings: Settings
) -> None:
    fields = {"epochs": "auto", "pooling": "grid", "tta": "true", "budget_s": "60"}
    response = client.post(
        "/jobs/finetune",
        data={
            "model": "pets",
            **fields,
            "dataset": (io.BytesIO(zip_archive(_classes({"a": 3, "b": 3}))), "d.zip"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    record = JobStore(redis_client(settings.redis_url), 60).fields(response.get_json()["id"])
    params = json.loads(record["params"])
    assert params["epochs"] == "auto" and params["unfreeze"] == "auto"
    assert params["pooling"] == "grid" and params["tta"] is True and params["budget_s"] == 60
    assert params["distill_alpha"] == 0.5 and "teacher" not in params


def test_missing_dataset_part_is_invalid_request(client: FlaskClient) -> None:
    response = client.post(
        "/jobs/finetune", data={"model": "pets"}, content_type="multipart/form-data"
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
