"""Open Inference Protocol v2, driven with ``tritonclient.http`` against the real stack.

The client is used as a Triton user would use it: binary tensors by default, JSON when asked,
the classification extension, the API key passed with ``headers=``. A second API on the
session's Redis and prediction worker answers with every ImageNet class's score
(``IMGQ_MAX_TOP_K=1000``) and holds clients to one queued image, so a quota refusal is
easy to provoke; the session's API keeps the default ceiling, which one test shows.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from imgq.local.supervisor import Service, free_port, start_api
from imgq.quotas import JobKind, Quota, Quotas
from imgq.settings import Settings
from ml.registry import ModelRegistry, ModelVersion, model_id, publish_version, staging_dir
from tests.support.http import credentials, http, wait_for_job

pytestmark = pytest.mark.e2e

CAT_CLASSES = {281, 282, 283, 284, 285}
"""ImageNet indices of domestic cats."""
ESPRESSO = 967
PRIVATE = "oip-private"
"""A model of bob's that alice must not see."""


@pytest.fixture(scope="module")
def wide_api(settings: Settings, service_dir: Path, predict_worker: Service) -> Iterator[str]:
    """An API that returns all 1000 scores and bounds clients to one queued image; its URL."""
    wide = settings.model_copy(update={"max_top_k": 1000, "quota_queued_images": 1})
    port = free_port()
    service = start_api(wide, service_dir, port)
    yield f"http://127.0.0.1:{port}"
    service.stop()


@pytest.fixture(scope="module")
def bobs_model(settings: Settings) -> str:
    """Bob's two-class ``oip-private`` (metadata only: it is never run)."""
    registry = ModelRegistry(settings.model_store)
    model = model_id("bob", PRIVATE)
    staged = staging_dir(registry, model)
    (staged / "model.keras").write_bytes(b"never loaded")
    version = publish_version(
        registry,
        model,
        staged,
        lambda n: ModelVersion(model, n, "trained", "efficientnet_lite0", 64, ["a", "b"], 0.0),
    )
    registry.activate(model, version.version)
    return PRIVATE


def _client(base: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(base.removeprefix("http://"), network_timeout=60)


def _key(client: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {credentials.keys[client]}"}


def _images(*jpegs: bytes) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(jpegs)], "BYTES")
    tensor.set_data_from_numpy(np.array(jpegs, dtype=np.object_))
    return tensor


def _classes(rows: np.ndarray) -> list[list[tuple[float, int, str]]]:
    """``"score:index:label"`` elements, parsed (bytes from binary data, str from JSON)."""
    parsed = []
    for row in rows:
        entries = []
        for element in row:
            text = element.decode() if isinstance(element, bytes) else element
            score, index, label = text.split(":", 2)
            entries.append((float(score), int(index), label))
        parsed.append(entries)
    return parsed


def test_health_and_server_metadata_answer_without_a_key(wide_api: str) -> None:
    client = _client(wide_api)
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "imgq"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])


def test_model_metadata_describes_one_image_input_and_the_scores_output(wide_api: str) -> None:
    client = _client(wide_api)
    meta = client.get_model_metadata("imagenet", headers=_key())
    assert (meta["name"], meta["platform"], meta["versions"]) == ("imagenet", "imgq", ["1"])
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]
    assert client.get_model_metadata("imagenet", "1", headers=_key()) == meta
    assert client.is_model_ready("imagenet", headers=_key())
    assert client.is_model_ready("imagenet", "1", headers=_key())
    assert not client.is_model_ready("imagenet", "7", headers=_key())
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("imagenet")  # no key
    assert refused.value.status() == "401"


def test_binary_infer_of_two_jpegs_returns_every_class_score(
    wide_api: str, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    result = _client(wide_api).infer(
        "imagenet", [_images(cat_jpeg, coffee_jpeg)], request_id="two", headers=_key()
    )
    scores = result.as_numpy("probabilities")
    assert scores.dtype == np.float32 and scores.shape == (2, 1000)
    assert int(np.argmax(scores[0])) in CAT_CLASSES
    assert int(np.argmax(scores[1])) == ESPRESSO
    assert scores.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-3)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == (
        "two",
        "imagenet",
        "1",
    )
    job = http.get(f"{wide_api}/jobs/{response['parameters']['job_id']}").json()
    assert (job["type"], job["status"]) == ("predict", "succeeded")
    assert job["result"]["predictions"][1][0]["score"] == pytest.approx(scores[1].max(), 1e-6)


def test_json_and_binary_outputs_and_the_classification_extension(
    wide_api: str, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    client = _client(wide_api)
    images = _images(coffee_jpeg, cat_jpeg)
    for binary in (False, True):
        requested = [triton.InferRequestedOutput("probabilities", binary, class_count=3)]
        result = client.infer("imagenet", [images], outputs=requested, headers=_key())
        coffee, cat = _classes(result.as_numpy("probabilities"))
        assert len(coffee) == len(cat) == 3
        assert coffee[0][1:] == (ESPRESSO, "espresso") and cat[0][1] in CAT_CLASSES
        assert [entry[0] for entry in cat] == sorted((entry[0] for entry in cat), reverse=True)
    plain = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    scores = client.infer("imagenet", [images], outputs=plain, headers=_key())
    assert "binary_data_size" not in scores.get_output("probabilities").get("parameters", {})
    assert int(np.argmax(scores.as_numpy("probabilities")[0])) == ESPRESSO


def test_json_tensors_take_base64_strings_and_answer_json(wide_api: str, cat_jpeg: bytes) -> None:
    body = {
        "id": "json-1",
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(cat_jpeg).decode()],
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    response = http.post(f"{wide_api}/v2/models/imagenet/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    (output,) = response.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [1, 2])
    assert int(output["data"][0].split(":")[1]) in CAT_CLASSES
    assert response.json()["id"] == "json-1"
    job_id = response.json()["parameters"]["job_id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"
    key = {"Idempotency-Key": "oip-json-1"}
    first = http.post(f"{wide_api}/v2/models/imagenet/infer", json=body, headers=key)
    again = http.post(f"{wide_api}/v2/models/imagenet/infer", json=body, headers=key)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()  # the same job, answered again


def test_a_job_past_the_requests_timeout_is_a_504_and_runs_on(
    wide_api: str, cat_jpeg: bytes
) -> None:
    body = {
        "parameters": {"timeout": 1},  # Triton's, in microseconds: no job ends that soon
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(cat_jpeg).decode()],
            }
        ],
    }
    response = http.post(f"{wide_api}/v2/models/imagenet/infer", json=body)
    assert response.status_code == 504, response.text
    job_id = response.json()["error"].split("GET /jobs/")[1].rstrip(").")
    assert wait_for_job(wide_api, job_id)["status"] == "succeeded"


def test_another_clients_model_is_a_404_in_the_protocols_shape(
    wide_api: str, bobs_model: str, cat_jpeg: bytes
) -> None:
    client = _client(wide_api)
    meta = client.get_model_metadata(bobs_model, headers=_key("bob"))
    assert meta["outputs"][0]["shape"] == [-1, 2]
    for call in (
        lambda: client.get_model_metadata(bobs_model, headers=_key("alice")),
        lambda: client.infer(bobs_model, [_images(cat_jpeg)], headers=_key("alice")),
    ):
        with pytest.raises(InferenceServerException) as hidden:
            call()
        assert hidden.value.status() == "404"
        assert PRIVATE in hidden.value.message()
    assert not client.is_model_ready(bobs_model, headers=_key("alice"))
    raw = http.as_client("alice").get(f"{wide_api}/v2/models/{bobs_model}")
    unknown = http.as_client("alice").get(f"{wide_api}/v2/models/no-such-model")
    assert (raw.status_code, unknown.status_code) == (404, 404)
    assert raw.json() == {"error": f"No model named {PRIVATE!r}."}


def test_a_quota_refusal_shows_through_as_429(
    wide_api: str, settings: Settings, redis_client: redis.Redis, cat_jpeg: bytes
) -> None:
    quotas = Quotas(redis_client, settings.job_ttl_s)
    roomy = Quota(
        jobs=10,
        queued_images=10,
        queued_image_bytes=1 << 30,
        long_jobs=1,
        explain_jobs=1,
        upload_bytes=1,
    )
    assert quotas.admit("alice", "oip-waiting", JobKind.PREDICT, roomy, images=1) is None
    client = _client(wide_api)
    try:  # alice has an image queued: the API's quota of one queued image is used up
        with pytest.raises(InferenceServerException) as refused:
            client.infer("imagenet", [_images(cat_jpeg)], headers=_key("alice"))
    finally:
        quotas.release("alice", "oip-waiting")
    assert refused.value.status() == "429"
    assert "quota" in refused.value.message()
    one = client.infer("imagenet", [_images(cat_jpeg)], headers=_key("alice"))
    assert int(np.argmax(one.as_numpy("probabilities")[0])) in CAT_CLASSES
    job_id = one.get_response()["parameters"]["job_id"]
    listed = http.as_client("alice").get(f"{wide_api}/jobs", params={"limit": 100}).json()
    assert job_id in [job["id"] for job in listed["jobs"]]  # an ordinary job of the caller's


def _post_infer(base: str, body: bytes, **headers: str) -> requests.Response:
    return http.post(f"{base}/v2/models/imagenet/infer", data=body, headers=headers)


def test_malformed_requests_are_400s_with_an_error_message(wide_api: str) -> None:
    def tensor(**changes: Any) -> dict[str, Any]:
        return {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"], **changes}

    bodies = [
        b"not json",
        b"[1, 2]",
        b'{"inputs": []}',
        json.dumps({"inputs": [tensor(name="pixels")]}).encode(),
        json.dumps({"inputs": [tensor(datatype="FP32")]}).encode(),
        json.dumps({"inputs": [tensor(shape=[2])]}).encode(),
    ]
    for body in bodies:
        response = _post_infer(wide_api, body)
        assert response.status_code == 400, (body, response.text)
        assert isinstance(response.json()["error"], str) and response.json()["error"]
    header = b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}'
    response = _post_infer(wide_api, header + b"\x00", **{"Inference-Header-Content-Length": "x"})
    assert response.status_code == 400
    truncated = header.replace(b'"BYTES"', b'"BYTES", "parameters": {"binary_data_size": 9}')
    response = _post_infer(
        wide_api,
        truncated + b"\x07\x00\x00\x00abcde",  # 7 bytes announced, 5 sent
        **{"Inference-Header-Content-Length": str(len(truncated))},
    )
    assert response.status_code == 400 and "truncated" in response.json()["error"]


def test_all_1000_scores_come_back_under_the_default_top_k_ceiling(
    api_server: str, predict_worker: Service, cat_jpeg: bytes
) -> None:
    client = _client(api_server)
    result = client.infer("imagenet", [_images(cat_jpeg)], headers=_key())
    scores = result.as_numpy("probabilities")
    assert scores.shape == (1, 1000) and int(np.argmax(scores[0])) in CAT_CLASSES
    top = [triton.InferRequestedOutput("probabilities", class_count=5)]
    result = client.infer("imagenet", [_images(cat_jpeg)], outputs=top, headers=_key())
    (cat,) = _classes(result.as_numpy("probabilities"))
    assert len(cat) == 5 and cat[0][1] in CAT_CLASSES


def test_a_raw_binary_body_and_a_compressed_request_are_read(
    wide_api: str, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    raw = _post_infer(wide_api, cat_jpeg, **{"Inference-Header-Content-Length": "0"})
    assert raw.status_code == 200, raw.text
    result = triton.InferResult.from_response_body(
        raw.content, header_length=int(raw.headers["Inference-Header-Content-Length"])
    )
    assert int(np.argmax(result.as_numpy("probabilities")[0])) in CAT_CLASSES
    top = [triton.InferRequestedOutput("probabilities", class_count=1)]
    packed = _client(wide_api).infer(
        "imagenet",
        [_images(coffee_jpeg)],
        outputs=top,
        headers=_key(),
        request_compression_algorithm="gzip",
    )
    assert _classes(packed.as_numpy("probabilities"))[0][0][1] == ESPRESSO
