"""The serving path's own cost: imgq with a model that costs almost nothing, in one run.

On a GPU the model costs well under a millisecond per image, so what a job costs is imgq's
own path: HTTP, the job record, the queue, the batch, the result and the wake-up. This
benchmark isolates that path. It registers a near-zero-cost model like any trained version
(saved as ``model.keras`` and published to the registry; the worker loads it like every other
version, nothing is mocked): by default (``--model lite0-32``) the EfficientNet-Lite0 backbone
at 32 px with a three-class head, the model the issue's BentoML figures served; with
``--model pooled`` a pooling layer and a dense layer, which leaves imgq's own path alone. It
starts Redis, the API (gunicorn) and one prediction worker, and drives them with closed-loop
clients sending a 48x48 JPEG:

- 1, 8 and 64 clients; jobs of 1 and of 16 images;
- long poll (``Prefer: wait=30`` on the submit, then ``GET /jobs/<id>?wait=30`` if needed)
  and fixed polling (submit, then ``GET /jobs/<id>`` every 0.25 s);
- multipart form uploads, and the raw image body (``Content-Type: image/jpeg``) for
  single-image jobs.

For each level it prints jobs/s, client-side p50/p99 (submit to result in hand) and the CPU
milliseconds per job of each process (API, worker, Redis, the load generator itself), read from
``/proc`` before and after the measured window. The load generator speaks HTTP/1.1 with
``http.client`` on kept-alive connections and prebuilt bodies, so it costs as little as a
Python client can.

Run: ``.venv/bin/python bench/serving_path.py`` (``make bench`` runs it after
``bench/throughput.py``). Figures move from run to run; compare ratios of one run.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgq.api_keys import create_key_file
from imgq.local.supervisor import (
    REPO,
    free_port,
    process_cpu_seconds,
    start_api,
    start_predict_worker,
    start_redis,
    tree_cpu_seconds,
)
from imgq.settings import Settings

MODEL = "nearzero"
"""Name of the near-zero-cost model the benchmark registers for its admin client."""
CLIENT = "bench-admin"
"""The benchmark's client (an admin: quotas never throttle it)."""
POLL_INTERVAL_S = 0.25
"""How often a fixed-polling client reads its job."""


def tiny_jpeg(size: int = 48) -> bytes:
    """scikit-image's chelsea photo at ``size`` x ``size`` as a JPEG."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((size, size)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


MODEL_KINDS = {
    "lite0-32": "the EfficientNet-Lite0 backbone at 32 px with a 3-class head",
    "pooled": "global average pooling of the pixels into a 3-class dense layer",
}
"""The near-zero-cost models the benchmark can register: ``lite0-32`` is the model the issue's
BentoML figures served; ``pooled`` costs next to nothing, so what is left is imgq's own path."""


def register_nearzero_model(settings: Settings, kind: str) -> str:
    """Publish a near-zero-cost classifier (``MODEL_KINDS``) as ``@bench-admin/nearzero`` v1
    and activate it: a real Keras model in the registry, loaded by the worker the normal way."""
    import keras

    from ml.backbones import WeightSources, load_backbone
    from ml.registry import ModelRegistry, ModelVersion, model_id, publish_version, staging_dir
    from ml.train import TrainConfig, build_classifier

    registry = ModelRegistry(settings.model_store)
    model = model_id(CLIENT, MODEL)
    if registry.exists(model):
        return model
    if kind == "pooled":
        inputs = keras.Input((32, 32, 3), name="image")
        pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
        network = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    else:
        backbone = load_backbone(
            "efficientnet_lite0",
            32,
            pretrained=True,
            sources=WeightSources(settings.weights_dir, settings.efficientnet_lite_checkpoint),
        )
        network = build_classifier(backbone, 3, TrainConfig()).model
    staged = staging_dir(registry, model)
    network.save(staged / "model.keras")
    labels = ["cat", "coffee", "rocket"]
    publish_version(
        registry,
        model,
        staged,
        lambda number: ModelVersion(
            model, number, "trained", "efficientnet_lite0", 32, labels, time.time()
        ),
    )
    registry.activate(model, 1)
    return model


@dataclass(frozen=True)
class Workload:
    """One kind of job the clients send, and how they wait for it."""

    images: int
    long_poll: bool
    raw_body: bool = False

    @property
    def label(self) -> str:
        """A short description for the tables."""
        form = "raw body" if self.raw_body else "multipart"
        wait = "long poll" if self.long_poll else f"poll {POLL_INTERVAL_S:g}s"
        return f"{self.images:>2} img, {form:<9}, {wait}"


@dataclass
class Level:
    """What one load level measured."""

    workload: Workload
    clients: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        """Jobs completed inside the measured window."""
        return len(self.latencies_s)

    @property
    def jobs_per_s(self) -> float:
        """Completed jobs per second."""
        return self.jobs / self.seconds

    def percentile_ms(self, q: float) -> float:
        """Client-side latency percentile in milliseconds."""
        return float(np.percentile(self.latencies_s, q)) * 1000 if self.latencies_s else 0.0

    def cpu_ms_per_job(self, process: str) -> float:
        """CPU milliseconds ``process`` spent per completed job."""
        return self.cpu_s.get(process, 0.0) * 1000 / max(self.jobs, 1)


def _multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for index, image in enumerate(images):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{index}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
            + image
            + b"\r\n"
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        f"{MODEL}\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """One closed-loop client on a kept-alive HTTP/1.1 connection."""

    def __init__(self, port: int, api_key: str, workload: Workload, image: bytes) -> None:
        self._port = port
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.workload = workload
        if workload.raw_body:
            self._path = f"/jobs/predict?model={MODEL}"
            self._body, content_type = image, "image/jpeg"
        else:
            self._path = "/jobs/predict"
            self._body, content_type = _multipart([image] * workload.images)
        self._submit_headers = {**self._headers, "Content-Type": content_type}
        if workload.long_poll:
            self._submit_headers["Prefer"] = "wait=30"

    def _call(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, Any]:
        for attempt in range(2):
            try:
                self._connection.request(method, path, body=body, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()  # the server closed a kept-alive connection: reopen
                self._connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=60)
                if attempt:
                    raise
        if response.status not in (200, 202):
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        document: dict[str, Any] = json.loads(payload)
        return document

    def one_job(self) -> dict[str, Any]:
        """Submit one job and return it once it has ended."""
        document = self._call("POST", self._path, self._body, self._submit_headers)
        job = f"/jobs/{document['id']}"
        while document["status"] not in ("succeeded", "failed", "canceled"):
            if self.workload.long_poll:
                document = self._call("GET", f"{job}?wait=30", None, self._headers)
            else:
                time.sleep(POLL_INTERVAL_S)
                document = self._call("GET", job, None, self._headers)
        return document


def run_level(
    port: int,
    api_key: str,
    image: bytes,
    workload: Workload,
    clients: int,
    *,
    warmup_s: float,
    seconds: float,
    pids: dict[str, int],
) -> Level:
    """Closed loop: ``clients`` threads each submit a job, wait for it, and repeat."""
    level = Level(workload, clients, seconds)
    lock = threading.Lock()
    start = time.monotonic() + warmup_s
    end = start + seconds
    cpu_before: dict[str, float] = {}
    ready = threading.Barrier(clients + 1)

    def loop() -> None:
        client = Client(port, api_key, workload, image)
        ready.wait()
        while time.monotonic() < end:
            began = time.monotonic()
            try:
                document = client.one_job()
            except Exception as exc:  # reported with the level
                with lock:
                    level.failures.append(repr(exc))
                continue
            done = time.monotonic()
            if document["status"] != "succeeded":
                with lock:
                    level.failures.append(str(document.get("error")))
            elif start <= began and done <= end:
                with lock:
                    level.latencies_s.append(done - began)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(max(start - time.monotonic(), 0.0))
    cpu_before = _cpu(pids)
    time.sleep(max(end - time.monotonic(), 0.0))
    cpu_after = _cpu(pids)
    for thread in threads:
        thread.join()
    level.cpu_s = {name: cpu_after[name] - cpu_before[name] for name in pids}
    return level


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree (the load generator: this process only)."""
    return {
        name: process_cpu_seconds(pid) if name == "load generator" else tree_cpu_seconds(pid)
        for name, pid in pids.items()
    }


PROCESSES = ("api", "worker", "redis", "load generator")
"""The processes whose CPU each level reports, in table order."""


def print_levels(levels: list[Level]) -> None:
    """The benchmark's table: throughput, latency, and CPU per job per process."""
    header = f"{'workload':<32} {'clients':>7} {'jobs/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    cpu_header = " ".join(f"{name.split()[0]:>7}" for name in PROCESSES)
    print(f"\n{header}   CPU ms/job: {cpu_header} {'service':>8}")
    for level in levels:
        service = sum(level.cpu_ms_per_job(name) for name in ("api", "worker", "redis"))
        cpu = " ".join(f"{level.cpu_ms_per_job(name):>7.2f}" for name in PROCESSES)
        print(
            f"{level.workload.label:<32} {level.clients:>7} {level.jobs_per_s:>8.1f} "
            f"{level.percentile_ms(50):>8.1f} {level.percentile_ms(99):>8.1f}   "
            f"            {cpu} {service:>8.2f}"
        )
        if level.failures:
            print(f"    {len(level.failures)} failures, e.g. {level.failures[0][:160]}")


def measure_raw(settings: Settings, model: str, image: bytes, seconds: float) -> float:
    """The near-zero model's single-image latency in this process (decode + predict), in s."""
    from ml.classifier import load_classifier
    from ml.preprocess import ImageLimits, decode_image
    from ml.registry import ModelRegistry

    registry = ModelRegistry(settings.model_store)
    version = registry.get(model)
    classifier = load_classifier(
        version,
        registry.local_version_dir(model, version.version),
        settings.weights_dir,
        settings.max_batch_size,
    )
    classifier.warm_up()
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        pixels = decode_image(image, classifier.image_size, limits)
        classifier.top_k(classifier.predict_proba(pixels[None]), 5)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


BENTOML_REFERENCE = {1: (76.6, 12.9, None), 64: (232.4, 224.0, 1007.0)}
"""BentoML 1.4.30 with adaptive batching serving the same near-zero model on this machine
kind, from the issue that asked for this benchmark: clients -> (req/s, p50 ms, p99 ms). Not
measured in this run; the ratios against it say so."""


def print_ratios(levels: list[Level], raw_s: float) -> None:
    """The targets' ratios: CPU per job, against BentoML's figures, and the idle overhead."""

    def find(images: int, long_poll: bool, clients: int, raw: bool = False) -> Level | None:
        return next(
            (
                level
                for level in levels
                if level.workload == Workload(images, long_poll, raw) and level.clients == clients
            ),
            None,
        )

    print("\nratios and targets:")
    for raw in (False, True):
        for clients in (1, 64):
            level = find(1, True, clients, raw)
            if level is None:
                continue
            service = sum(level.cpu_ms_per_job(name) for name in ("api", "worker", "redis"))
            form = "raw body" if raw else "multipart"
            print(
                f"  service CPU per single-image job, {form}, {clients} clients, long poll: "
                f"{service:.2f} ms (target <= 4)"
            )
    for clients, (rate, p50, _) in BENTOML_REFERENCE.items():
        for raw in (False, True):
            level = find(1, True, clients, raw)
            if level is None:
                continue
            form = "raw body" if raw else "multipart"
            print(
                f"  {clients} clients, long poll, {form}: {level.jobs_per_s:.1f} jobs/s = "
                f"{level.jobs_per_s / rate:.2f}x BentoML's {rate} req/s (issue's figure, "
                f"not this run); p50 {level.percentile_ms(50):.1f} ms vs {p50} ms"
            )
    single = find(1, True, 1, True) or find(1, True, 1)
    if single is not None:
        print(
            f"  idle overhead (p50 at 1 client - raw single image {raw_s * 1000:.1f} ms): "
            f"{single.percentile_ms(50) - raw_s * 1000:.1f} ms"
        )
    long_poll, polled = find(1, True, 64), find(1, False, 64)
    if long_poll is not None and polled is not None:
        print(
            f"  64 clients, fixed polling / long poll: "
            f"{polled.jobs_per_s / max(long_poll.jobs_per_s, 1e-9):.2f} jobs/s, "
            f"API CPU per job {polled.cpu_ms_per_job('api'):.2f} vs "
            f"{long_poll.cpu_ms_per_job('api'):.2f} ms"
        )


def main() -> int:
    """Start the stack, run every level, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per level")
    parser.add_argument("--no-polling", action="store_true", help="long-poll levels only")
    parser.add_argument("--no-raw", action="store_true", help="multipart uploads only")
    parser.add_argument("--model", choices=sorted(MODEL_KINDS), default="lite0-32")
    parser.add_argument(
        "--batch-delay-ms",
        type=int,
        default=None,
        help="IMGQ_MAX_BATCH_DELAY_MS (default: its default)",
    )
    parser.add_argument(
        "--profile-wait",
        type=float,
        default=0.0,
        help="hold one 64-client long-poll level this many seconds (attach py-spy), then exit",
    )
    args = parser.parse_args()

    image = tiny_jpeg()
    workdir = Path(tempfile.mkdtemp(prefix="imgq-serving-path-"))
    api_key = create_key_file(workdir / "api-keys.json", CLIENT) or ""
    top = max(args.clients)
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        model_store=workdir / "models",
        weights_dir=REPO / "var" / "weights",
        api_threads=top + 8,
        metrics_port=free_port(),
        ready_file=workdir / "ready",
        log_level="WARNING",
        api_keys_file=workdir / "api-keys.json",
        default_model=MODEL,
    )
    if args.batch_delay_ms is not None:
        settings = settings.model_copy(update={"max_batch_delay_ms": args.batch_delay_ms})
    model = register_nearzero_model(settings, args.model)
    raw_s = measure_raw(settings, model, image, 3.0)
    redis_service = start_redis(settings, workdir / "redis", workdir)
    api = start_api(settings, workdir, port := free_port())
    worker = start_predict_worker(settings, workdir, name="bench-serving-path")
    pids = {
        "api": api.process.pid,
        "worker": worker.process.pid,
        "redis": redis_service.process.pid,
        "load generator": os.getpid(),
    }
    workloads = [Workload(n, True) for n in args.images]
    if not args.no_raw:
        workloads.insert(1, Workload(1, True, raw_body=True))
    if not args.no_polling:
        workloads += [Workload(n, False) for n in args.images]

    def run(workload: Workload, clients: int, warmup_s: float, seconds: float) -> Level:
        return run_level(
            port, api_key, image, workload, clients, warmup_s=warmup_s, seconds=seconds, pids=pids
        )

    levels: list[Level] = []
    try:
        run(Workload(1, True), 4, 0.0, 2.0)  # warm the HTTP path and the worker
        if args.profile_wait:
            print(f"profiling window: api pid {api.process.pid}, worker pid {worker.process.pid}")
            images = args.images[0]
            workload = Workload(images, True, raw_body=images == 1 and not args.no_raw)
            print_levels([run(workload, top, 0.0, args.profile_wait)])
            return 0
        for workload in workloads:
            for clients in args.clients:
                levels.append(run(workload, clients, args.warmup, args.seconds))
    finally:
        worker.stop()
        api.stop()
        redis_service.stop()
    print(
        f"machine: {os.cpu_count()} cores; image: chelsea 48x48 JPEG ({len(image)} bytes); "
        f"model: {model} ({MODEL_KINDS[args.model]}, raw single image {raw_s * 1000:.2f} ms); "
        f"API: {settings.api_workers} gunicorn workers x {settings.api_threads} threads; "
        f"one prediction worker, max batch {settings.max_batch_size}, "
        f"batch delay {settings.max_batch_delay_ms} ms"
    )
    print_levels(levels)
    print_ratios(levels, raw_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
