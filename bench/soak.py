"""Soak: a bounded run of mixed predict jobs, watching throughput and memory over time.

Starts Redis, the API (gunicorn), one prediction worker and one webhooks worker (the reaper)
on this machine, then keeps a few closed-loop clients busy for ``--minutes`` with a mix a real
tenant sends: one to four images per job, photos of several sizes, different ``top_k``, a few
explained jobs, and a few bad images that the API rejects. Every ``--window`` seconds it prints
jobs/s, latency, the prediction worker's and the API's resident memory and Redis' memory; at
the end, memory at the start and end of the run and its growth over the second half, which is
what says whether memory has levelled off.

Run: ``.venv/bin/python bench/soak.py --minutes 10``. Not a test: it takes minutes and its
figures depend on the machine.
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgq.api_keys import create_key_file
from imgq.local.supervisor import (
    REPO,
    Service,
    free_port,
    process_tree,
    start_api,
    start_predict_worker,
    start_redis,
    start_webhooks_worker,
)
from imgq.settings import Settings


def photos() -> list[bytes]:
    """JPEGs of several sizes: scikit-image's photos, one enlarged, one tiny."""
    from skimage import data

    loaders: list[Callable[[], np.ndarray]] = [data.chelsea, data.coffee, data.astronaut]
    encoded = []
    for array in (load() for load in loaders):
        for scale in (0.25, 1.0, 2.0):
            image = Image.fromarray(array)
            size = (max(16, int(image.width * scale)), max(16, int(image.height * scale)))
            buffer = io.BytesIO()
            image.resize(size).save(buffer, "JPEG", quality=85)
            encoded.append(buffer.getvalue())
    return encoded


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and its children (gunicorn's workers), in MiB."""
    total = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


@dataclass
class Tally:
    """What the clients saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies_s: list[float] = field(default_factory=list)
    jobs: int = 0
    images: int = 0
    rejected: int = 0
    failed: list[str] = field(default_factory=list)

    def take(self) -> tuple[int, int, int, list[float]]:
        """Counts since the last call, and reset them."""
        with self.lock:
            taken = (self.jobs, self.images, self.rejected, self.latencies_s)
            self.jobs, self.images, self.rejected, self.latencies_s = 0, 0, 0, []
        return taken


def client_loop(
    base: str, api_key: str, images: list[bytes], tally: Tally, stop: threading.Event
) -> None:
    """Submit a random job, wait for it, repeat; about 2 % explained and 2 % bad images."""
    rng = random.Random()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"
    while not stop.is_set():
        roll = rng.random()
        chosen = rng.choices(images, k=rng.randint(1, 4))
        body: dict[str, object] = {"top_k": rng.choice([1, 3, 5])}
        if roll < 0.02:
            chosen = [b"not an image at all"]
        elif roll < 0.04:
            body["explain"] = "gradcam"
            chosen = chosen[:1]
        body["images"] = [base64.b64encode(image).decode() for image in chosen]
        started = time.monotonic()
        response = session.post(f"{base}/jobs/predict", json=body, timeout=60)
        if response.status_code == 400:
            with tally.lock:
                tally.rejected += 1
            continue
        if response.status_code != 202:
            tally.failed.append(response.text)
            continue
        job_id = response.json()["id"]
        while True:
            document = session.get(f"{base}/jobs/{job_id}", params={"wait": 30}, timeout=40).json()
            if document["status"] not in ("queued", "running"):
                break
        if document["status"] != "succeeded":
            tally.failed.append(str(document.get("error")))
            continue
        with tally.lock:
            tally.jobs += 1
            tally.images += len(chosen)
            tally.latencies_s.append(time.monotonic() - started)


def main() -> int:
    """Run the soak and print one line per window, then the memory summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per printed line")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imgq-soak-"))
    api_key = create_key_file(workdir / "api-keys.json") or ""
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        model_store=workdir / "models",
        weights_dir=REPO / "var" / "weights",
        metrics_port=0,
        ready_file=workdir / "ready",
        log_level="WARNING",
        api_keys_file=workdir / "api-keys.json",
    )
    services: list[Service] = [start_redis(settings, workdir / "redis", workdir)]
    try:
        api = start_api(settings, workdir, free_port())
        services.append(api)
        services.append(start_webhooks_worker(settings, workdir))
        worker = start_predict_worker(settings, workdir)
        services.append(worker)
        run(args, api, worker, settings, api_key)
    finally:
        for service in reversed(services):
            service.stop()
    return 0


def run(
    args: argparse.Namespace, api: Service, worker: Service, settings: Settings, api_key: str
) -> None:
    """Drive the clients for the whole run, printing a line per window."""
    images = photos()
    tally, stop = Tally(), threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(api.url, api_key, images, tally, stop))
        for _ in range(args.clients)
    ]
    redis_client = redis.Redis.from_url(settings.redis_url)
    for thread in threads:
        thread.start()
    print(
        f"{args.clients} clients, {args.minutes:g} min, windows of {args.window:g} s\n"
        f"{'t (s)':>6} {'jobs/s':>7} {'img/s':>6} {'p50 s':>6} {'p95 s':>6} {'rejected':>8} "
        f"{'worker MiB':>10} {'api MiB':>8} {'redis MiB':>9}"
    )
    started = time.monotonic()
    rss: list[tuple[float, float]] = [(0.0, tree_rss_mb(worker.process.pid))]
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.window)
            elapsed = time.monotonic() - started
            jobs, count, rejected, latencies = tally.take()
            worker_mb = tree_rss_mb(worker.process.pid)
            rss.append((elapsed, worker_mb))
            p50 = statistics.median(latencies) if latencies else float("nan")
            p95 = float(np.percentile(latencies, 95)) if latencies else float("nan")
            redis_mb = int(redis_client.info("memory")["used_memory"]) / 2**20
            print(
                f"{elapsed:6.0f} {jobs / args.window:7.1f} {count / args.window:6.1f} "
                f"{p50:6.2f} {p95:6.2f} {rejected:8d} {worker_mb:10.0f} "
                f"{tree_rss_mb(api.process.pid):8.0f} {redis_mb:9.1f}",
                flush=True,
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    half = [mb for t, mb in rss if t >= rss[-1][0] / 2]
    minutes = (rss[-1][0] - rss[-1][0] / 2) / 60
    print(
        f"\nprediction worker RSS: start {rss[0][1]:.0f} MiB (after warm-up), "
        f"after first window {rss[1][1]:.0f} MiB, end {rss[-1][1]:.0f} MiB; "
        f"second half {half[0]:.0f} -> {half[-1]:.0f} MiB "
        f"({(half[-1] - half[0]) / max(minutes, 1e-9):+.1f} MiB/min)"
    )
    print(
        f"failed jobs: {len(tally.failed)}" + (f", e.g. {tally.failed[0]}" if tally.failed else "")
    )


if __name__ == "__main__":
    sys.exit(main())
