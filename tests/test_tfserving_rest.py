"""TF Serving's REST API: imgq answers ``:predict`` as TF Serving does for imgq's own export.

The reference is the real thing minus the server: the SavedModel export of a small fine-tuned
model, loaded in this process, its ``serving_default`` signature run on the same images. The
model is ``exportable`` v1 as ``tests/test_exports.py`` trains it, and its SavedModel export;
both are reused when that module already made them in this session.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from imgq.local.supervisor import Service
from tests.support.datasets import cat_image, make_dataset_zip, submit_finetune
from tests.support.http import http, wait_for_job

pytestmark = pytest.mark.e2e

MODEL = "exportable"


def _made_once(base: str) -> None:
    """``exportable`` v1 and its SavedModel export, unless this session already made them."""
    if http.get(f"{base}/models/{MODEL}").status_code == 404:
        trained = submit_finetune(base, make_dataset_zip(per_class=24, seed=3), model=MODEL)
        assert trained.status_code == 202, trained.text
        assert wait_for_job(base, trained.json()["id"], 600)["status"] == "succeeded"
    exports = f"{base}/models/{MODEL}/versions/1/exports"
    if "saved_model" not in [entry["format"] for entry in http.get(exports).json()]:
        export = http.post(exports, json={"format": "saved_model"})
        assert export.status_code == 202, export.text
        assert wait_for_job(base, export.json()["id"], 600)["status"] == "succeeded"


@pytest.fixture(scope="module")
def signature(
    api_server: str, predict_worker: Service, train_worker: Service, tmp_path_factory: Any
) -> Any:
    """The export's ``serving_default``, loaded here as TF Serving would load it."""
    import tensorflow as tf

    _made_once(api_server)
    archive = http.get(f"{api_server}/models/{MODEL}/versions/1/exports/saved_model")
    folder: Path = tmp_path_factory.mktemp("saved_model")
    with zipfile.ZipFile(io.BytesIO(archive.content)) as bundle:
        bundle.extractall(folder)
    return tf.saved_model.load(str(folder)).signatures["serving_default"]


def _b64(image: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(image).decode()}


def test_predict_answers_what_the_saved_model_signature_answers(
    api_server: str, signature: Any, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    import tensorflow as tf

    images = [cat_image(), coffee_jpeg, cat_jpeg]
    expected = signature(images=tf.constant(images))
    response = http.post(
        f"{api_server}/v1/models/{MODEL}:predict",
        json={"instances": [_b64(image) for image in images]},
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(images)
    for row, classes, scores in zip(
        predictions, expected["classes"].numpy(), expected["scores"].numpy(), strict=True
    ):
        assert set(row) == {"classes", "scores"}
        assert row["classes"] == [name.decode() for name in classes]
        # imgq decodes with Pillow, the signature with tf.image (both antialiased): pixels
        # differ a little, scores by about 0.01.
        assert row["scores"] == pytest.approx(scores.tolist(), abs=0.05)
    assert predictions[0]["classes"][0] == "cat"
    job = http.get(f"{api_server}{response.headers['Location']}").json()
    assert (job["type"], job["status"]) == ("predict", "succeeded")


def test_columnar_inputs_answer_columnar_outputs(
    api_server: str, signature: Any, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    images = [_b64(cat_jpeg), _b64(coffee_jpeg)]
    url = f"{api_server}/v1/models/{MODEL}/versions/1:predict"
    rows = http.post(url, json={"instances": [{"images": image} for image in images]}).json()
    for inputs in (images, {"images": images}):
        response = http.post(url, json={"signature_name": "serving_default", "inputs": inputs})
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        assert outputs["classes"] == [row["classes"] for row in rows["predictions"]]
        for scores, row in zip(outputs["scores"], rows["predictions"], strict=True):
            assert scores == pytest.approx(row["scores"], abs=1e-4)  # maybe another batch
    as_curl_sends_it = http.post(  # curl -d: a JSON body labelled as a form
        url,
        data=json.dumps({"instances": images}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert as_curl_sends_it.status_code == 200, as_curl_sends_it.text
    assert as_curl_sends_it.json()["predictions"][0]["classes"] == rows["predictions"][0]["classes"]


def test_model_status_lists_the_available_versions(api_server: str, signature: Any) -> None:
    available = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    every = http.get(f"{api_server}/v1/models/{MODEL}").json()["model_version_status"]
    assert {**available, "version": "1"} in every
    one = http.get(f"{api_server}/v1/models/{MODEL}/versions/1").json()
    assert one == {"model_version_status": [{**available, "version": "1"}]}
    missing = http.get(f"{api_server}/v1/models/{MODEL}/versions/99")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


def test_errors_are_tf_serving_error_objects(
    api_server: str, signature: Any, cat_jpeg: bytes
) -> None:
    url = f"{api_server}/v1/models/{MODEL}:predict"
    one = {"instances": [_b64(cat_jpeg)]}
    answers = {
        "not json": http.post(url, data=b"{not json"),
        "other signature": http.post(url, json={**one, "signature_name": "classify"}),
        "both forms": http.post(url, json={**one, "inputs": [_b64(cat_jpeg)]}),
        "not an image": http.post(url, json={"instances": [_b64(b"plain text")]}),
        "bad base64": http.post(url, json={"instances": [{"b64": "%%%"}]}),
        "another input": http.post(url, json={"instances": [{"pixels": [1, 2]}]}),
        "no key": requests.post(url, json=one, timeout=10),
        "not alice's": http.as_client("alice").post(url, json=one),
        "no such model": http.post(f"{api_server}/v1/models/nope:predict", json=one),
    }
    statuses = {case: response.status_code for case, response in answers.items()}
    assert statuses == {
        "not json": 400,
        "other signature": 400,
        "both forms": 400,
        "not an image": 400,
        "bad base64": 400,
        "another input": 400,
        "no key": 401,
        "not alice's": 404,
        "no such model": 404,
    }
    for response in answers.values():
        assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    assert answers["not alice's"].json() == {"error": f"No model named {MODEL!r}."}
