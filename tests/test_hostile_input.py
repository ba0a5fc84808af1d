"""A corpus of hostile requests and files, each with the answer the API owes it.

Clients send whatever they have: text files named ``.jpg``, half-uploaded photos, images that
declare a billion pixels, zip files that unpack to gigabytes or out of their folder, JSON that is
not an object, parameters that would train for a year. Each must get the right 4xx with a stable
``error.code`` in the JSON envelope, never a 500, a hang or a dead worker. The corpus goes
through the real stack (gunicorn, Redis, a prediction and a training worker) because several
failure modes only exist there: gunicorn's own limits, multipart parsing of real bodies, and
workers that could crash on input the API let through. When the API accepts an input it cannot
judge (only a worker can decode every image of a dataset), the entry expects ``202`` and the job
to fail with a specific code. After the corpus, both workers must still answer a ping and a
normal prediction must still succeed.

Payloads are built lazily (and cached) so that collecting the suite stays cheap.
"""

from __future__ import annotations

import base64
import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from imgq.local.supervisor import Service
from imgq.queueing import make_celery
from imgq.settings import Settings
from tests.support.datasets import zip_archive, zip_with_symlink
from tests.support.http import http, wait_for_job
from tests.support.images import encode_image

pytestmark = pytest.mark.e2e

Send = Callable[[str], requests.Response]
"""Sends one request to the API at the given base URL."""

DEFAULTS = Settings()
"""The limits the session's API runs with (the test settings keep every default limit)."""

MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One corpus entry: how to send it and the answer it must get.

    ``code`` is the error code of a 4xx answer. For an accepted input (``status`` 202),
    ``job_code`` is the code the job must fail with, or None when the job must succeed.
    """

    name: str
    send: Send
    status: int
    code: str | None = None
    job_code: str | None = None


# --- images -------------------------------------------------------------------------------------


def _encode(image_format: str, **options: Any) -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels), image_format, **options)


@cache
def _jpeg() -> bytes:
    return _encode("JPEG", quality=90)


@cache
def _png() -> bytes:
    return _encode("PNG")


def _noise(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_idat(png: bytes) -> tuple[int, int]:
    """Where the first IDAT chunk's body starts, and its length."""
    start = png.index(b"IDAT") + 4
    return start, struct.unpack(">I", png[start - 8 : start - 4])[0]


def _png_bad_header_crc() -> bytes:
    png = bytearray(_png())
    crc_at = png.index(b"IHDR") + 4 + 13
    png[crc_at] ^= 0xFF
    return bytes(png)


def _png_bad_idat_crc() -> bytes:
    start, length = _png_idat(_png())
    png = bytearray(_png())
    png[start + length] ^= 0xFF
    return bytes(png)


def _png_garbage_idat() -> bytes:
    """IDAT replaced by random bytes with a correct CRC: only decoding can tell."""
    png = _png()
    start, length = _png_idat(png)
    garbage = _noise(length, seed=3)
    return png[: start - 8] + _png_chunk(b"IDAT", garbage) + png[start + length + 4 :]


def _jpeg_garbage_after_header() -> bytes:
    jpeg = _jpeg()
    scan = jpeg.index(b"\xff\xda")
    return jpeg[: scan + 14] + _noise(2000, seed=5)


@cache
def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: huge declared, tiny on disk."""
    row = bytes(1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _gif_bomb() -> bytes:
    """A GIF whose logical screen is 60000 x 60000 around a one-pixel frame."""
    screen = b"GIF89a" + struct.pack("<HH", 60000, 60000) + b"\x00\x00\x00"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def _jpeg_bomb() -> bytes:
    """A small JPEG whose frame header claims 60000 x 60000 pixels."""
    jpeg = bytearray(_jpeg())
    frame = jpeg.index(b"\xff\xc0")
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(jpeg)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64"/></svg>'
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


# --- dataset archives ---------------------------------------------------------------------------


def _classes(*names: str) -> dict[str, bytes]:
    """Enough small PNGs per class to pass ``min_images_per_class``."""
    per_class = DEFAULTS.min_images_per_class
    return {f"{name}/{index}.png": _png() for name in names for index in range(per_class)}


@cache
def _dataset() -> bytes:
    return zip_archive(_classes("cats", "dogs"))


def _symlink_zip() -> bytes:
    return zip_with_symlink(_classes("cats", "dogs"), "cats/link.png")


def _zip_bomb() -> bytes:
    """A valid dataset plus 64 MiB of zeros, streamed in: ~0.2 MB on the wire."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, payload in _classes("cats", "dogs").items():
            archive.writestr(name, payload)
        with archive.open("cats/zeros.png", "w") as member:
            for _ in range(64):
                member.write(bytes(MIB))
        unpacked = sum(info.file_size for info in archive.infolist())
    bomb = buffer.getvalue()
    assert unpacked / len(bomb) > 2 * DEFAULTS.max_dataset_ratio  # refused by ratio, by far
    return bomb


def _undecodable_dataset() -> bytes:
    """Two classes of files named like images that are not images: only decoding can tell."""
    per_class = DEFAULTS.min_images_per_class
    return zip_archive(
        {
            f"{name}/{index}.jpg": b"this is not a jpeg " * 20
            for name in ("cats", "dogs")
            for index in range(per_class)
        }
    )


# --- how requests are sent ----------------------------------------------------------------------

Payload = Callable[[], bytes]
"""Builds a payload when its case runs."""

INVALID_IMAGE = "invalid_image"
INVALID_REQUEST = "invalid_request"
VALIDATION = "validation_error"
BOMB = "decompression_bomb"
BAD_CALLBACK = "invalid_callback_url"
BAD_ARCHIVE = "invalid_archive"


def _long_name_tar() -> bytes:
    """A 200 kB .tar.gz whose one member has a 200 MB GNU long name (tarfile alone reads it
    whole, for seconds of CPU, before any limit of ours applies)."""
    size = 200 * 1024 * 1024 + 1
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, size
    megabyte = gzip.compress(b"a" * 1024 * 1024, compresslevel=9)
    return gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT)) + megabyte * 200


NO_JOB = "job_not_found"
UNKNOWN_JOB = "/jobs/0123456789abcdef"
EXPORTS = "/models/imagenet/versions/1/exports"


def upload(payload: Payload, **form: str) -> Send:
    """``POST /jobs/predict`` with the payload as the ``image`` part of a form."""

    def send(api: str) -> requests.Response:
        files = {"image": ("upload.jpg", payload(), "image/jpeg")}
        return http.post(f"{api}/jobs/predict", files=files, data=form)

    return send


def as_json(*images: Payload) -> Send:
    """``POST /jobs/predict`` with the payloads base64-encoded in a JSON body."""
    return send_json("/jobs/predict", lambda: {"images": [_b64(image()) for image in images]})


def options(**values: object) -> Send:
    """A JSON predict request for a valid image with these options."""
    return send_json("/jobs/predict", lambda: {"images": [_b64(_jpeg())], **values})


def send_json(path: str, body: Callable[[], object]) -> Send:
    """``POST`` a JSON document as the admin."""
    return lambda api: http.post(f"{api}{path}", json=body())


def raw(payload: bytes, content_type: str | None, path: str = "/jobs/predict") -> Send:
    """``POST`` bytes as they are, with the given ``Content-Type`` (or none)."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    return lambda api: http.post(f"{api}{path}", data=payload, headers=headers)


def call(method: str, path: str, client: str = "admin", **kwargs: Any) -> Send:
    """Any request to ``path`` with the key of ``client`` (looked up when the case runs)."""

    def send(api: str) -> requests.Response:
        sender = http if client == "admin" else http.as_client(client)
        return sender.request(method, f"{api}{path}", **kwargs)

    return send


def finetune(archive: Payload = _dataset, filename: str = "dataset.zip", **form: str) -> Send:
    """``POST /jobs/finetune`` with an archive and form fields (a valid dataset by default)."""

    def send(api: str) -> requests.Response:
        files = {"dataset": (filename, archive(), "application/zip")}
        return http.post(f"{api}/jobs/finetune", files=files, data={"model": "pets", **form})

    return send


def _many_images(api: str) -> requests.Response:
    count = DEFAULTS.max_images_per_job + 1
    files = [("image", (f"{index}.jpg", _jpeg(), "image/jpeg")) for index in range(count)]
    return http.post(f"{api}/jobs/predict", files=files)


def _bad_idempotency_key(api: str) -> requests.Response:
    body = {"images": [_b64(_jpeg())]}
    headers = {"Idempotency-Key": "not a key"}  # spaces are not allowed
    return http.post(f"{api}/jobs/predict", json=body, headers=headers)


def _with_member(name: str) -> Payload:
    return lambda: zip_archive({**_classes("cats", "dogs"), name: _jpeg()})


GARBLED_MULTIPART = b"--xyz\r\nContent-Disposition: form-data; name=image\r\n\r\nno end"
DEEP_JSON = b"[" * 100_000
"""Nested far past Python's recursion limit, and far under ``max_request_bytes``."""

IMAGE_CASES = [
    Case("text-file", upload(lambda: b"hello, this is a text file\n"), 400, INVALID_IMAGE),
    Case("pdf-header", upload(lambda: PDF), 400, INVALID_IMAGE),
    Case("random-bytes", upload(lambda: _noise(4096)), 400, INVALID_IMAGE),
    Case("zero-bytes", upload(lambda: b""), 400, INVALID_IMAGE),
    Case("svg", upload(lambda: SVG), 400, INVALID_IMAGE),
    Case("truncated-jpeg", upload(lambda: _jpeg()[: len(_jpeg()) // 2]), 400, INVALID_IMAGE),
    Case(
        "jpeg-header-only",
        upload(lambda: _jpeg()[: _jpeg().index(b"\xff\xda")]),
        400,
        INVALID_IMAGE,
    ),
    Case("jpeg-garbage-after-header", upload(_jpeg_garbage_after_header), 400, INVALID_IMAGE),
    Case("truncated-png", upload(lambda: _png()[: len(_png()) // 2]), 400, INVALID_IMAGE),
    Case("png-bad-header-crc", upload(_png_bad_header_crc), 400, INVALID_IMAGE),
    Case("png-garbage-idat", upload(_png_garbage_idat), 400, INVALID_IMAGE),
    # Pillow does not check IDAT checksums; the pixels are intact, so the job must succeed.
    Case("png-bad-idat-crc-tolerated", upload(_png_bad_idat_crc), 202),
    Case("truncated-gif", upload(lambda: _encode("GIF")[:-60]), 400, INVALID_IMAGE),
    Case("gif-header-only", upload(lambda: _encode("GIF")[:13]), 400, INVALID_IMAGE),
    Case("corrupt-webp", upload(lambda: _encode("WEBP")[:30] + _noise(400)), 400, INVALID_IMAGE),
    Case("truncated-webp", upload(lambda: _encode("WEBP")[:40]), 400, INVALID_IMAGE),
    Case("base64-pdf", as_json(lambda: PDF), 400, INVALID_IMAGE),
    Case("second-image-truncated", as_json(_jpeg, lambda: _jpeg()[:60]), 400, INVALID_IMAGE),
    Case("png-bomb-30000x30000", upload(lambda: _png_bomb(30000, 30000)), 400, BOMB),
    Case("png-over-max-image-pixels", upload(lambda: _png_bomb(8000, 8000)), 400, BOMB),
    Case("gif-bomb", upload(_gif_bomb), 400, BOMB),
    Case("jpeg-bomb-header", upload(_jpeg_bomb), 400, BOMB),
    Case(
        "image-over-max-image-bytes",
        upload(lambda: _noise(DEFAULTS.max_image_bytes + 1)),
        413,
        "image_too_large",
    ),
    Case(
        "body-over-max-request-bytes",
        upload(lambda: bytes(DEFAULTS.max_request_bytes + MIB)),
        413,
        "payload_too_large",
    ),
    Case("too-many-images", _many_images, 400, "too_many_images"),
]

REQUEST_CASES = [
    Case("text-plain-body", raw(b"cat.jpg", "text/plain"), 415, "unsupported_media_type"),
    Case("xml-body", raw(b"<images/>", "application/xml"), 415, "unsupported_media_type"),
    Case(
        "urlencoded-body",
        raw(b"image=abc", "application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    ),
    Case("no-content-type", raw(b"\xff\xd8\xff", None), 415, "unsupported_media_type"),
    Case(
        "multipart-without-image",
        call("POST", "/jobs/predict", files={"top_k": (None, "3")}),
        400,
        INVALID_REQUEST,
    ),
    Case(
        "multipart-wrong-part-name",
        call("POST", "/jobs/predict", files={"photo": ("a.jpg", b"\xff\xd8")}),
        400,
        INVALID_REQUEST,
    ),
    Case(
        "multipart-garbled",
        raw(GARBLED_MULTIPART, "multipart/form-data; boundary=xyz"),
        400,
        INVALID_REQUEST,
    ),
    Case("malformed-json", raw(b'{"images": [', "application/json"), 400, INVALID_REQUEST),
    Case(
        "json-not-utf8", raw(b'{"images": ["\xff\xfe"]}', "application/json"), 400, INVALID_REQUEST
    ),
    Case("json-array", send_json("/jobs/predict", lambda: [_b64(_jpeg())]), 400, INVALID_REQUEST),
    Case("json-null", raw(b"null", "application/json"), 400, INVALID_REQUEST),
    # Python's JSON parser raises RecursionError, not ValueError, past ~1000 levels.
    Case("json-deeply-nested", raw(DEEP_JSON, "application/json"), 400, INVALID_REQUEST),
    Case("malformed-base64", options(images=["@@not base64@@"]), 400, INVALID_REQUEST),
    Case("base64-bad-padding", options(images=[_b64(b"abcd")[:-2]]), 400, INVALID_REQUEST),
    Case("data-url-garbage", options(images=["data:image/png;base64,%%%"]), 400, INVALID_REQUEST),
    Case("images-missing", send_json("/jobs/predict", lambda: {"top_k": 3}), 422, VALIDATION),
    Case("images-empty", options(images=[]), 422, VALIDATION),
    Case("images-not-a-list", options(images="aGVsbG8="), 422, VALIDATION),
    Case("images-numbers", options(images=[1, 2]), 422, VALIDATION),
    Case("unknown-field", options(colour="blue"), 422, VALIDATION),
    Case("unknown-form-field", upload(_jpeg, colour="blue"), 422, VALIDATION),
    Case("top-k-huge", options(top_k=10**9), 422, VALIDATION),
    Case("top-k-zero", options(top_k=0), 422, VALIDATION),
    Case("top-k-negative", options(top_k=-5), 422, VALIDATION),
    Case("top-k-string", options(top_k="five"), 422, VALIDATION),
    Case("top-k-fraction", options(top_k=2.5), 422, VALIDATION),
    Case("top-k-form-text", upload(_jpeg, top_k="lots"), 422, VALIDATION),
    Case("model-unknown", options(model="no-such-model"), 404, "model_not_found"),
    Case("model-path-traversal", options(model="../../etc"), 422, VALIDATION),
    Case("model-not-a-string", options(model=["imagenet"]), 422, VALIDATION),
    Case("version-unknown", options(version=999), 404, "version_not_found"),
    Case("version-zero", options(version=0), 422, VALIDATION),
    Case("explain-unknown", options(explain="lime"), 422, VALIDATION),
    Case("callback-ftp", options(callback_url="ftp://example.com/hook"), 400, BAD_CALLBACK),
    Case("callback-file", options(callback_url="file:///etc/passwd"), 400, BAD_CALLBACK),
    Case("callback-not-a-url", options(callback_url="call me maybe"), 400, BAD_CALLBACK),
    Case("callback-no-host", options(callback_url="http:///hook"), 400, BAD_CALLBACK),
    Case("callback-bad-port", options(callback_url="http://127.0.0.1:99999/"), 400, BAD_CALLBACK),
    Case(
        "callback-too-long", options(callback_url="http://a.example/" + "x" * 3000), 422, VALIDATION
    ),
    Case(
        "idempotency-key-with-spaces",
        _bad_idempotency_key,
        400,
        INVALID_REQUEST,
    ),
]

FINETUNE_CASES = [
    Case("finetune-epochs-zero", finetune(epochs="0"), 422, VALIDATION),
    Case("finetune-epochs-million", finetune(epochs="1000000"), 422, VALIDATION),
    Case("finetune-learning-rate-negative", finetune(learning_rate="-0.01"), 422, VALIDATION),
    Case("finetune-learning-rate-nan", finetune(learning_rate="nan"), 422, VALIDATION),
    Case("finetune-batch-size-zero", finetune(batch_size="0"), 422, VALIDATION),
    Case("finetune-batch-size-text", finetune(batch_size="lots"), 422, VALIDATION),
    Case("finetune-unfreeze-over-one", finetune(unfreeze="1.5"), 422, VALIDATION),
    Case("finetune-image-size-tiny", finetune(image_size="1"), 422, VALIDATION),
    Case("finetune-dropout-one", finetune(dropout="1"), 422, VALIDATION),
    Case("finetune-unknown-field", finetune(optimizer="sgd"), 422, VALIDATION),
    Case("finetune-unknown-backbone", finetune(base="vgg99"), 422, VALIDATION),
    Case("finetune-unknown-base-model", finetune(base="nosuchmodel:3"), 404, "model_not_found"),
    Case("finetune-reserved-model-name", finetune(model="imagenet"), 400, "reserved_model_name"),
    Case("finetune-bad-model-name", finetune(model="../Evil Name"), 422, VALIDATION),
    Case("finetune-callback-ftp", finetune(callback_url="ftp://example.com/"), 400, BAD_CALLBACK),
    Case(
        "finetune-json-body",
        send_json("/jobs/finetune", lambda: {"model": "pets"}),
        400,
        INVALID_REQUEST,
    ),
    Case(
        "finetune-no-dataset-part",
        call("POST", "/jobs/finetune", files={"model": (None, "pets")}),
        400,
        INVALID_REQUEST,
    ),
    Case("finetune-not-a-zip", finetune(lambda: b"definitely not a zip"), 400, BAD_ARCHIVE),
    Case("finetune-empty-file", finetune(lambda: b""), 400, BAD_ARCHIVE),
    Case("finetune-jpeg-named-zip", finetune(_jpeg), 400, BAD_ARCHIVE),
    Case("finetune-wrong-suffix", finetune(_dataset, "dataset.rar"), 400, INVALID_REQUEST),
    Case("finetune-zip-traversal", finetune(_with_member("../evil.jpg")), 400, BAD_ARCHIVE),
    Case("finetune-zip-absolute-path", finetune(_with_member("/etc/evil.jpg")), 400, BAD_ARCHIVE),
    Case("finetune-zip-symlink", finetune(_symlink_zip), 400, BAD_ARCHIVE),
    Case("finetune-zip-bomb", finetune(_zip_bomb), 413, "archive_too_large"),
    Case(
        "finetune-tar-200mb-long-name",
        finetune(_long_name_tar, "dataset.tar.gz"),
        413,
        "archive_too_large",
    ),
    Case("finetune-zip-deep-path", finetune(_with_member("a/" * 8000 + "x.jpg")), 400, BAD_ARCHIVE),
    Case(
        "finetune-single-class",
        finetune(lambda: zip_archive(_classes("cats"))),
        400,
        "invalid_dataset",
    ),
    Case(
        "finetune-no-images",
        finetune(lambda: zip_archive({"cats/readme.txt": b"x", "dogs/notes.txt": b"y"})),
        400,
        "invalid_dataset",
    ),
    # Only decoding finds that no file is an image: accepted, then the worker must fail it.
    Case(
        "finetune-undecodable-images",
        finetune(_undecodable_dataset, epochs="1", fine_tune_epochs="0"),
        202,
        job_code="invalid_dataset",
    ),
]

ROUTING_CASES = [
    Case("missing-key", call("GET", "/jobs", headers={"Authorization": None}), 401, "unauthorized"),
    Case(
        "wrong-key",
        call("GET", "/jobs", headers={"Authorization": "Bearer imgq-not-a-key"}),
        401,
        "unauthorized",
    ),
    Case(
        "basic-auth-scheme",
        call("GET", "/jobs", headers={"Authorization": "Basic YWRtaW46eA=="}),
        401,
        "unauthorized",
    ),
    Case(
        "client-activates-version",
        call("POST", "/models/imagenet/versions/1/activate", "alice"),
        403,
        "forbidden",
    ),
    Case("unknown-job", call("GET", UNKNOWN_JOB), 404, NO_JOB),
    Case("cancel-unknown-job", call("DELETE", UNKNOWN_JOB), 404, NO_JOB),
    Case("artifact-of-unknown-job", call("GET", f"{UNKNOWN_JOB}/artifacts/x.png"), 404, NO_JOB),
    Case("job-wait-too-long", call("GET", UNKNOWN_JOB, params={"wait": "1000"}), 422, VALIDATION),
    Case("jobs-limit-zero", call("GET", "/jobs", params={"limit": "0"}), 422, VALIDATION),
    Case(
        "jobs-status-unknown", call("GET", "/jobs", params={"status": "exploded"}), 422, VALIDATION
    ),
    Case(
        "jobs-cursor-garbage", call("GET", "/jobs", params={"cursor": "1; DROP"}), 422, VALIDATION
    ),
    Case("model-unknown-get", call("GET", "/models/no-such-model"), 404, "model_not_found"),
    Case("export-unknown-format", call("POST", EXPORTS, json={"format": "exe"}), 422, VALIDATION),
    Case(
        "export-unknown-version",
        call("POST", "/models/imagenet/versions/999/exports", json={"format": "tflite"}),
        404,
        "version_not_found",
    ),
    Case("export-malformed-json", raw(b"{", "application/json", EXPORTS), 400, INVALID_REQUEST),
    Case(
        "export-deeply-nested-json",
        raw(DEEP_JSON, "application/json", EXPORTS),
        400,
        INVALID_REQUEST,
    ),
    Case("unknown-route", call("GET", "/admin/secrets"), 404, "not_found"),
    Case("wrong-method", call("PUT", "/jobs/predict"), 405, "method_not_allowed"),
    Case("wrong-method-models", call("DELETE", "/models"), 405, "method_not_allowed"),
    # gunicorn answers this one itself (its request line limit is 4094 bytes), before Flask.
    Case("request-line-too-long", call("GET", f"/jobs/{'a' * 5000}"), 414, "uri_too_long"),
]

CASES = IMAGE_CASES + REQUEST_CASES + FINETUNE_CASES + ROUTING_CASES


def _check_error_envelope(response: requests.Response, case: Case) -> None:
    answer = f"{response.status_code} {response.headers.get('Content-Type')}: {response.text[:300]}"
    assert response.headers.get("Content-Type", "").startswith("application/json"), answer
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, answer
    error = body["error"]
    assert set(error) <= {"code", "message", "details"}, answer
    assert (response.status_code, error["code"]) == (case.status, case.code), answer
    assert isinstance(error["message"], str) and error["message"].strip(), answer


def _cancel_if_accepted(api: str, response: requests.Response) -> None:
    """Do not leave a wrongly accepted job (a fine-tune) running for the rest of the session."""
    if response.status_code == 202:
        http.delete(f"{api}/jobs/{response.json()['id']}")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_gets_its_documented_answer(
    case: Case, api_server: str, predict_worker: Service, train_worker: Service
) -> None:
    response = case.send(api_server)
    if case.status != 202:
        _cancel_if_accepted(api_server, response)
        _check_error_envelope(response, case)
        return
    assert response.status_code == 202, f"{response.status_code}: {response.text[:300]}"
    job = wait_for_job(api_server, response.json()["id"], timeout_s=45)
    if case.job_code is None:
        assert job["status"] == "succeeded", job
        return
    assert job["status"] == "failed", job
    assert job["error"]["code"] == case.job_code, job
    assert job["error"]["message"], job


def test_workers_survive_the_corpus_and_still_predict(
    api_server: str,
    predict_worker: Service,
    train_worker: Service,
    settings: Settings,
    cat_jpeg: bytes,
) -> None:
    control = make_celery(settings).control
    for worker in (predict_worker, train_worker):
        assert worker.process.poll() is None, f"{worker.name} exited; see {worker.log_path}"
        assert control.ping(destination=[worker.node], timeout=2), f"{worker.name} is silent"
    response = http.post(
        f"{api_server}/jobs/predict", files={"image": ("cat.jpg", cat_jpeg, "image/jpeg")}
    )
    assert response.status_code == 202, response.text
    job = wait_for_job(api_server, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert len(job["result"]["predictions"][0]) == DEFAULTS.default_top_k
