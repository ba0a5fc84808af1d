"""The API's memory under a burst of small images that decode to a lot, through the real stack.

The issue's attack: 16-bit greyscale PNGs of 8000 x 5000 pixels, 80 kB each and exactly at
``max_image_pixels``, four to a request and several requests at once. The float64 path took
about 1 GB per image and the API's processes reached 4 GB here; the pod is killed at 768 MiB.
The same burst of the costliest image the limits accept (a 12 MP WebP) must fit too.
Here a gunicorn runs with the pod's process layout (the ``IMGQ_API_WORKERS`` and
``IMGQ_API_THREADS`` of ``deploy/base/imgq.env``), and the resident memory of all its
processes, added up, is sampled from ``/proc`` while the burst runs; each process's high-water
mark is read at the end too, so a peak between two samples is not missed. Every request must
still get a real answer: ``202`` or a 4xx JSON error.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from PIL import Image

from imgq.local.supervisor import Service, free_port, process_tree, start_api
from imgq.settings import Settings
from ml.preprocess import SMALL_DECODE_BYTES, SMALL_DECODES
from tests.support.http import http
from tests.support.images import encode_image
from tests.test_preprocess import sixteen_bit_png

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
REQUESTS = 8
"""Concurrent requests of the burst (each carries four of the PNGs)."""


def _pod_layout() -> dict[str, int]:
    """Gunicorn workers and threads as the manifests configure the API pod."""
    env = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "base" / "imgq.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {
        "api_workers": int(env["IMGQ_API_WORKERS"]),
        "api_threads": int(env["IMGQ_API_THREADS"]),
    }


def _pod_memory_limit() -> int:
    """The API container's memory limit in ``deploy/base/api.yaml``, in bytes."""
    for document in yaml.safe_load_all((REPO / "deploy" / "base" / "api.yaml").read_text()):
        if document and document.get("kind") == "Deployment":
            containers = document["spec"]["template"]["spec"]["containers"]
            (container,) = [c for c in containers if c["name"] == "api"]
            limit = container["resources"]["limits"]["memory"]
            number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limit).groups()  # type: ignore[union-attr]
            return int(number) * {"Mi": MIB, "Gi": 1024 * MIB}[unit]
    raise AssertionError("no Deployment in deploy/base/api.yaml")


@pytest.fixture(scope="module")
def pod_api(settings: Settings, service_dir: Path) -> Iterator[tuple[str, Service]]:
    """A gunicorn with the API pod's workers and threads and the default decode limits."""
    defaults = Settings()
    decoding = {
        name: getattr(defaults, name)
        for name in ("max_image_pixels", "max_decode_bytes", "max_concurrent_decodes")
    }
    port = free_port()
    service = start_api(
        settings.model_copy(update={**_pod_layout(), **decoding}), service_dir, port
    )
    yield f"http://127.0.0.1:{port}", service
    service.stop()


def _status(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory line in bytes (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


class _Sampler(threading.Thread):
    """Adds up the resident memory of a process tree every few milliseconds."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, sum(_status(pid, "VmRSS") for pid in self.pids))
            time.sleep(0.005)


def _answer(response: requests.Response) -> str | None:
    """Why the response is not a proper answer (None when it is)."""
    if response.status_code == 202:
        return None
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    if 400 <= response.status_code < 500 and is_json:
        error = response.json().get("error", {})
        if error.get("code") and error.get("message"):
            return None
    return f"{response.status_code} {response.text[:200]}"


def _largest_webp() -> bytes:
    """The WebP with the largest decode the default limits accept: 12 MP, 17 bytes a pixel."""
    return encode_image(Image.new("RGB", (4032, 3024), "white"), "WEBP", lossless=True)


IMAGES = {
    "16-bit-png": lambda: sixteen_bit_png(8000, 5000),
    "largest-webp": _largest_webp,
}
"""The issue's image (80 MB decoded), and the costliest one the limits let through."""


@pytest.mark.parametrize("kind", IMAGES)
def test_a_burst_of_small_files_that_decode_big_stays_under_the_api_pods_memory_limit(
    kind: str, pod_api: tuple[str, Service], cat_jpeg: bytes
) -> None:
    base, service = pod_api
    pids = process_tree(service.process.pid)
    workers = _pod_layout()["api_workers"]
    assert len(pids) == 1 + workers, pids
    limit = _pod_memory_limit()
    image = IMAGES[kind]()
    assert len(image) < 200_000
    files = [("image", (f"{index}.img", image, "application/octet-stream")) for index in range(4)]
    idle = sum(_status(pid, "VmRSS") for pid in pids)

    def send(_: int) -> requests.Response:
        return http.post(f"{base}/jobs/predict", files=files, timeout=120)

    sampler = _Sampler(pids)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(REQUESTS) as pool:
        burst = [pool.submit(send, index) for index in range(REQUESTS)]
        time.sleep(0.5)  # the burst's decodes hold the API's decode slots
        small_started = time.monotonic()
        small = http.post(
            f"{base}/jobs/predict", files={"image": ("cat.jpg", cat_jpeg, "image/jpeg")}
        )
        small_s = time.monotonic() - small_started
        responses = [future.result() for future in burst]
    burst_s = time.monotonic() - started
    sampler.stopped.set()
    sampler.join()
    high_water = sum(_status(pid, "VmHWM") for pid in pids)
    for response in [*responses, small]:
        if response.status_code == 202:
            http.delete(f"{base}/jobs/{response.json()['id']}")  # no worker needs to decode them

    report = (
        f"idle {idle / MIB:.0f} MiB, sampled peak {sampler.peak / MIB:.0f} MiB, high-water "
        f"marks {high_water / MIB:.0f} MiB (limit {limit / MIB:.0f} MiB); burst {burst_s:.1f} s"
    )
    print(report)
    assert [_answer(response) for response in responses] == [None] * REQUESTS, report
    assert small.status_code == 202, small.text
    assert sampler.peak < limit, report
    assert high_water < limit, report
    # What the module's docstring promises for each process: N full decodes and 4 small ones.
    defaults = Settings()
    per_process = (
        defaults.max_concurrent_decodes * (defaults.max_decode_bytes + 6 * MIB)
        + SMALL_DECODES * SMALL_DECODE_BYTES
    )
    assert sampler.peak - idle <= workers * per_process, report
    # A small image is checked at once, not queued behind the large decodes.
    assert small_s < burst_s / 2, f"the small request took {small_s:.1f} s; {report}"


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(
    pod_api: tuple[str, Service],
) -> None:
    base, _ = pod_api
    defaults = Settings()
    png = sixteen_bit_png(8000, 5000)
    count = defaults.max_request_pixels // defaults.max_image_pixels + 1
    files = [("image", (f"{index}.png", png, "image/png")) for index in range(count)]
    response = http.post(f"{base}/jobs/predict", files=files, timeout=60)
    if response.status_code == 202:
        http.delete(f"{base}/jobs/{response.json()['id']}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "decompression_bomb"
    assert error["details"] == {
        "pixels": count * defaults.max_image_pixels,
        "limit": defaults.max_request_pixels,
    }
