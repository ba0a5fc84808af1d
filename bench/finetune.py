"""Phase 1 of fine-tuning with cached backbone features versus re-running the backbone.

Trains the same head on the same frozen, pretrained EfficientNet-Lite0 twice, for the same
number of epochs, and prints the wall time and the test accuracy of each way:

* cached: the backbone runs once over the training and validation images, and the head trains
  on the stored features (what imgq does when augmentation is off);
* re-run: the full model trains with the backbone frozen and augmentation on, so every epoch
  runs the backbone over every image again (what augmentation forces, since each epoch sees
  new pixels).

The dataset is made from scikit-image's sample photos (random crops, flips and colour shifts
of several photos, one class per photo). Run: ``.venv/bin/python bench/finetune.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgq.local.supervisor import REPO

PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "horse")


def make_split(per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random crops of each sample photo, one class per photo, as uint8 ``(n, size, size, 3)``."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        photo = getattr(data, name)()
        if photo.ndim == 2:  # grey photos (camera)
            photo = np.stack([photo] * 3, axis=-1)
        photo = photo[..., :3]
        height, width = photo.shape[:2]
        for _ in range(per_class):
            crop_size = int(min(height, width) * rng.uniform(0.5, 0.95))
            top = rng.integers(0, height - crop_size + 1)
            left = rng.integers(0, width - crop_size + 1)
            crop = photo[top : top + crop_size, left : left + crop_size].astype(np.float32)
            crop = (crop * rng.uniform(0.8, 1.2) + rng.uniform(-25, 25)).clip(0, 255)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            resized = Image.fromarray(crop.astype(np.uint8)).resize((size, size))
            images.append(np.asarray(resized))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int32)


class _Quiet:
    def report(self, progress: dict[str, Any]) -> bool:
        return False


def run_phase_one(
    cache: bool, splits: dict[str, Any], args: argparse.Namespace
) -> dict[str, float]:
    """Train the head once, cached or not; return seconds and test accuracy."""
    import keras

    from ml.backbones import WeightSources, load_backbone
    from ml.train import TrainConfig, train_classifier

    keras.utils.set_random_seed(args.seed)
    backbone = load_backbone(
        "efficientnet_lite0", args.size, True, WeightSources(REPO / "var" / "weights")
    )
    config = TrainConfig(
        epochs=args.epochs,
        fine_tune_epochs=0,
        batch_size=32,
        seed=args.seed,
        patience=args.epochs,  # no early stop: both run every epoch
        augment=not cache,  # augmentation is what makes imgq re-run the backbone
    )
    started = time.perf_counter()
    outcome = train_classifier(
        backbone,
        len(PHOTOS),
        splits["train"],
        splits["validation"],
        config=config,
        hooks=_Quiet(),
    )
    history = outcome.history
    seconds = time.perf_counter() - started
    images, labels = splits["test"]
    predicted = np.argmax(outcome.model.predict(images, verbose=0), axis=1)
    return {
        "seconds": seconds,
        "accuracy": float(np.mean(predicted == labels)),
        "epochs": float(len(history["loss"])),
    }


def main() -> int:
    """Run both ways and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40, help="training images per class")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    splits = {
        "train": make_split(args.per_class, args.size, args.seed),
        "validation": make_split(max(4, args.per_class // 4), args.size, args.seed + 1),
        "test": make_split(max(8, args.per_class // 2), args.size, args.seed + 2),
    }
    results = {way: run_phase_one(way == "cached", splits, args) for way in ("re-run", "cached")}
    print(
        f"\nphase 1, {args.epochs} head epochs, EfficientNet-Lite0 frozen at {args.size} px, "
        f"{len(PHOTOS)} classes, {len(splits['train'][1])} train / "
        f"{len(splits['validation'][1])} val / {len(splits['test'][1])} test images"
    )
    print(f"{'way':<8} {'seconds':>8} {'epochs':>7} {'test accuracy':>14}")
    for way, result in results.items():
        print(
            f"{way:<8} {result['seconds']:>8.1f} {int(result['epochs']):>7} "
            f"{result['accuracy']:>14.3f}"
        )
    speedup = results["re-run"]["seconds"] / results["cached"]["seconds"]
    gap = abs(results["re-run"]["accuracy"] - results["cached"]["accuracy"]) * 100
    print(f"\ncached is {speedup:.1f}x faster; accuracy differs by {gap:.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
