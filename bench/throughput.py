"""Prediction throughput: the raw model in-process versus the whole service, in one run.

Starts Redis, the API (gunicorn) and one prediction worker on this machine, then prints:

1. raw: images/s of the same classifier in this process on the same JPEG bytes (decode with
   the worker's decoder threads, then predict, with the worker's inference lanes) at several
   batch sizes, and the single-image latency;
2. end-to-end: jobs/s through HTTP (submit with ``Prefer: wait=30``, which answers with the
   finished job, else long-poll until the job ends) at several concurrencies, one image per
   job, with p50/p95/p99 latency from submit to result stored (the job record's
   ``created_at`` to ``finished_at``);
3. the same with batching off (the worker restarted with ``IMGQ_MAX_BATCH_SIZE=1``);
4. the ratios end-to-end / raw and batched / unbatched, the idle overhead (p50 at concurrency 1
   minus the raw single-image latency), and the batch sizes the worker actually ran.

Run: ``.venv/bin/python bench/throughput.py`` (``make bench``). Figures move from run to run;
compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgq.api_keys import create_key_file
from imgq.local.supervisor import (
    REPO,
    free_port,
    start_api,
    start_predict_worker,
    start_redis,
    tree_cpu_seconds,
)
from imgq.settings import Settings


@dataclass
class Level:
    """What one concurrency level measured."""

    concurrency: int
    jobs_per_s: float
    latencies_s: list[float]

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(self.latencies_s, q)) * 1000


def sample_jpeg() -> bytes:
    """scikit-image's chelsea photo (451x300) as a JPEG, as a client would send it."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def measure_raw(
    settings: Settings, image: bytes, batch_sizes: list[int], seconds: float
) -> tuple[dict[int, float], float]:
    """Images/s per batch size, and the p50 single-image latency (s), in this process."""
    from ml.classifier import load_classifier
    from ml.preprocess import ImageLimits, decode_image
    from ml.registry import BUILTIN_MODEL_ID, ModelRegistry
    from ml.runtime import inference_lanes

    registry = ModelRegistry(settings.model_store)
    version = registry.get(BUILTIN_MODEL_ID)  # what the service ran (`imagenet` is shared)
    classifier = load_classifier(
        version,
        registry.local_version_dir(BUILTIN_MODEL_ID, version.version),
        settings.weights_dir,
        max(batch_sizes),
        lanes=inference_lanes(settings.inference_lanes),  # the worker's runtime, exactly
        lane_batch=settings.lane_batch_size,
    )
    classifier.warm_up()
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    decoders = ThreadPoolExecutor(settings.decode_threads)

    def run_batch(size: int) -> None:
        pixels = list(
            decoders.map(lambda b: decode_image(b, classifier.image_size, limits), [image] * size)
        )
        classifier.top_k(classifier.predict_proba(np.stack(pixels)), 5)

    rates = {}
    single: list[float] = []
    for size in batch_sizes:
        run_batch(size)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            began = time.perf_counter()
            run_batch(size)
            if size == 1:
                single.append(time.perf_counter() - began)
            count += size
        rates[size] = count / (time.perf_counter() - start)
    decoders.shutdown()
    return rates, statistics.median(single)


def _server_latency(document: dict[str, str]) -> float:
    created = datetime.fromisoformat(document["created_at"])
    finished = datetime.fromisoformat(document["finished_at"])
    return (finished - created).total_seconds()


def run_level(
    base: str, image: bytes, concurrency: int, warmup_s: float, seconds: float, *, api_key: str
) -> Level:
    """Closed loop: each client submits one image, waits for the result, and repeats."""
    start = time.monotonic() + warmup_s
    end = start + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    completed = 0
    failures: list[str] = []

    def client() -> None:
        nonlocal completed
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {api_key}"
        while time.monotonic() < end:
            response = session.post(
                f"{base}/jobs/predict",
                files={"image": ("cat.jpg", image, "image/jpeg")},
                headers={"Prefer": "wait=30"},  # the finished job in the same round trip
                timeout=40,
            )
            if response.status_code not in (200, 202):
                failures.append(response.text)
                continue
            document = response.json()
            while document["status"] not in ("succeeded", "failed"):
                document = session.get(
                    f"{base}/jobs/{document['id']}", params={"wait": 30}, timeout=40
                ).json()
            done = time.monotonic()
            if document["status"] != "succeeded":
                failures.append(str(document["error"]))
            elif start <= done <= end:
                with lock:
                    completed += 1
                    latencies.append(_server_latency(document))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} jobs failed, e.g. {failures[0]}")
    return Level(concurrency, completed / seconds, latencies)


def scrape_batches(port: int) -> dict[str, float]:
    """The worker's batch-size histogram as ``{bucket: cumulative count}`` plus sum and count."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "imgq_inference_batch_size":
            for sample in family.samples:
                key = sample.labels.get("le", sample.name.rsplit("_", 1)[-1])
                found[key] = found.get(key, 0) + sample.value
    return found


def run_service_levels(
    settings: Settings,
    workdir: Path,
    image: bytes,
    levels: list[int],
    args: argparse.Namespace,
    *,
    redis_pid: int,
    api_key: str,
) -> tuple[list[Level], dict[str, float], dict[str, float]]:
    """Start API and worker with ``settings``, run every level, stop them.

    Returns the levels, the worker's batch histogram over the last (busiest) level, and the
    CPU cores each process used during that level.
    """
    api = start_api(settings, workdir, free_port())
    worker = start_predict_worker(settings, workdir, name=f"bench-{settings.max_batch_size}")
    pids = {
        "api (gunicorn)": api.process.pid,
        "worker": worker.process.pid,
        "redis": redis_pid,
        "bench clients": os.getpid(),
    }
    try:
        run_level(api.url, image, 4, 0.0, 2.0, api_key=api_key)  # warm the HTTP path and the worker
        results = [
            run_level(api.url, image, c, args.warmup, args.seconds, api_key=api_key)
            for c in levels[:-1]
        ]
        histogram_before = scrape_batches(settings.metrics_port)
        cpu_before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        results.append(
            run_level(api.url, image, levels[-1], args.warmup, args.seconds, api_key=api_key)
        )
        elapsed = time.monotonic() - started
        cpu = {
            name: (tree_cpu_seconds(pid) - cpu_before[name]) / elapsed for name, pid in pids.items()
        }
        # This process is the parent of the services: its tree is the whole machine's share.
        cpu["all of imgq + clients"] = cpu.pop("bench clients")
        cpu["bench clients"] = cpu["all of imgq + clients"] - sum(
            cores for name, cores in cpu.items() if name != "all of imgq + clients"
        )
        histogram = {
            key: value - histogram_before.get(key, 0.0)
            for key, value in scrape_batches(settings.metrics_port).items()
        }
        return results, histogram, cpu
    finally:
        worker.stop()
        api.stop()


def print_levels(title: str, levels: list[Level]) -> None:
    """One table of end-to-end results."""
    print(f"\n{title}")
    print(f"{'clients':>8} {'jobs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'jobs':>6}")
    for level in levels:
        print(
            f"{level.concurrency:>8} {level.jobs_per_s:>8.1f} {level.percentile(50):>8.1f} "
            f"{level.percentile(95):>8.1f} {level.percentile(99):>8.1f} "
            f"{len(level.latencies_s):>6}"
        )


def print_histogram(histogram: dict[str, float]) -> None:
    """Batch sizes the worker ran, per bucket, and the Triton-style mean."""
    count, total = histogram.get("count", 0), histogram.get("sum", 0)
    print(
        f" {int(count)} forward passes for {int(total)} images "
        f"(inference_count / exec_count = {total / max(count, 1):.1f})"
    )
    previous = 0.0
    for bucket, cumulative in sorted(
        ((k, v) for k, v in histogram.items() if k not in ("count", "sum", "+Inf")),
        key=lambda kv: float(kv[0]),
    ):
        print(f"  batch <= {float(bucket):>5.0f}: {int(cumulative - previous)}")
        previous = cumulative


def main() -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time per level")
    parser.add_argument("--raw-seconds", type=float, default=4.0)
    args = parser.parse_args()

    image = sample_jpeg()
    workdir = Path(tempfile.mkdtemp(prefix="imgq-bench-"))
    api_key = create_key_file(workdir / "api-keys.json") or ""
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        model_store=workdir / "models",
        weights_dir=REPO / "var" / "weights",
        api_threads=max(args.concurrency) + 8,
        metrics_port=free_port(),
        ready_file=workdir / "ready",
        log_level="WARNING",
        api_keys_file=workdir / "api-keys.json",
    )
    redis_service = start_redis(settings, workdir / "redis", workdir)
    try:
        redis_pid = redis_service.process.pid
        batched, histogram, cpu = run_service_levels(
            settings, workdir, image, args.concurrency, args, redis_pid=redis_pid, api_key=api_key
        )
        unbatched_settings = settings.model_copy(update={"max_batch_size": 1})
        unbatched, _, _ = run_service_levels(
            unbatched_settings,
            workdir,
            image,
            [1, max(args.concurrency)],
            args,
            redis_pid=redis_pid,
            api_key=api_key,
        )
        raw, single_s = measure_raw(settings, image, [1, 8, 16, 32, 64], args.raw_seconds)
    finally:
        redis_service.stop()

    best_size = max(raw, key=lambda size: raw[size])
    print(
        f"machine: {sys.platform}, image: chelsea 451x300 JPEG ({len(image)} bytes), "
        f"model: {settings.default_model} ({settings.default_backbone})"
    )
    print("\nraw, in-process (decode + preprocess + predict):")
    for size, rate in raw.items():
        print(f"  batch {size:>3}: {rate:7.1f} img/s")
    print(f"  single image p50 latency: {single_s * 1000:.1f} ms")
    print_levels(
        f"end-to-end, batching on (max batch {settings.max_batch_size}, "
        f"delay {settings.max_batch_delay_ms} ms):",
        batched,
    )
    print_levels("end-to-end, batching off (IMGQ_MAX_BATCH_SIZE=1):", unbatched)
    print(f"\nworker batches during the {max(args.concurrency)}-client batched level:", end="")
    print_histogram(histogram)
    print(
        f"\nCPU used during the {max(args.concurrency)}-client batched level "
        f"(cores, of {os.cpu_count()}):"
    )
    for name, cores in cpu.items():
        print(f"  {name:<22} {cores:5.2f}")
    top = max(args.concurrency)
    e2e_top = next(level for level in batched if level.concurrency == top)
    off_top = next(level for level in unbatched if level.concurrency == top)
    first = batched[0]
    print("\nratios:")
    print(
        f"  end-to-end / raw at {top} clients: {e2e_top.jobs_per_s / raw[best_size]:.2f} "
        f"({e2e_top.jobs_per_s:.1f} / {raw[best_size]:.1f}, raw best at batch {best_size})"
    )
    worker_cores = cpu["worker"]
    per_core_raw = raw[best_size] / (os.cpu_count() or 1)
    print(
        f"  per core: end-to-end {e2e_top.jobs_per_s / worker_cores:.1f} img/s per worker core "
        f"/ raw {per_core_raw:.1f} img/s per core = "
        f"{e2e_top.jobs_per_s / worker_cores / per_core_raw:.2f}; the worker had "
        f"{worker_cores:.2f} of {os.cpu_count()} cores, the API, Redis and clients the rest"
    )
    print(f"  batched / unbatched at {top} clients: {e2e_top.jobs_per_s / off_top.jobs_per_s:.2f}")
    print(
        f"  idle overhead (p50 at {first.concurrency} client - raw single image): "
        f"{first.percentile(50) - single_s * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
