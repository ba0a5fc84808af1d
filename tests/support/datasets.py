"""Dataset archives as a client uploads them, and a fine-tune submitted with one.

``make_dataset_zip`` builds a learnable dataset from scikit-image's sample photos: random
crops, flips and colour shifts of a cat, a coffee cup and a rocket, at a small size so training
takes seconds. ``class_entries`` does the same for any classes (``MORE_PHOTOS`` has two more,
for datasets that grow), as archive entries a test can mix and zip with ``zip_archive``.
``zip_archive`` and ``zip_with_symlink`` build archives of any content, for the refusals.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import requests
from PIL import Image
from skimage import data

from tests.support.http import Http, http
from tests.support.images import encode_image

PHOTOS = {"cat": data.chelsea, "coffee": data.coffee, "rocket": data.rocket}
"""The classes of ``make_dataset_zip``, each with the sample photo its images are cut from."""
MORE_PHOTOS = {"astronaut": data.astronaut, "cells": data.immunohistochemistry}
"""Two more classes, unlike the three above and each other (both photos ship with
scikit-image, so they load offline)."""

FINETUNE_FORM = {
    "image_size": "64",
    "epochs": "4",
    "fine_tune_epochs": "1",
    "batch_size": "16",
    "unfreeze": "0.1",
}
"""Form fields of a fine-tune small enough for a test run."""


def _variants(photo: np.ndarray, count: int, rng: np.random.Generator) -> Iterator[bytes]:
    """``count`` 96-px JPEG crops of ``photo``, each shifted in brightness and maybe flipped."""
    height, width = photo.shape[:2]
    for _ in range(count):
        size = int(min(height, width) * rng.uniform(0.6, 0.95))
        top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        crop = photo[top : top + size, left : left + size].astype(np.float32)
        crop = crop * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        image = Image.fromarray(crop.clip(0, 255).astype(np.uint8)).resize((96, 96))
        yield encode_image(image, "JPEG", quality=85)


def make_dataset_zip(per_class: int = 14, seed: int = 0) -> bytes:
    """A ``<class>/<image>`` zip of cat, coffee and rocket crops.

    Args:
        per_class: images of each class.
        seed: seeds the crops; the same seed gives the same archive.

    Returns:
        The zip file's bytes.
    """
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, photo in PHOTOS.items():
            for index, jpeg in enumerate(_variants(photo(), per_class, rng)):
                archive.writestr(f"{name}/{index:03d}.jpg", jpeg)
    return buffer.getvalue()


def _rgb(photo: np.ndarray) -> np.ndarray:
    """An RGB array of a grayscale or RGB photo."""
    return np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo


def class_entries(
    classes: Mapping[str, Callable[[], np.ndarray]], per_class: int, seed: int = 0
) -> dict[str, bytes]:
    """Archive entries ``<class>/<index>.jpg`` of crops like ``make_dataset_zip``'s, of any photos.

    Args:
        classes: class name -> a function returning its photo (RGB or grayscale), such as
            ``PHOTOS`` or ``MORE_PHOTOS`` or both merged.
        per_class: images of each class.
        seed: seeds the crops; the same seed gives the same bytes.

    Returns:
        Entry name -> JPEG bytes, for ``zip_archive`` (mix in other entries first if needed).
    """
    rng = np.random.default_rng(seed)
    return {
        f"{name}/{index:03d}.jpg": jpeg
        for name, photo in classes.items()
        for index, jpeg in enumerate(_variants(_rgb(photo()), per_class, rng))
    }


def cat_image() -> bytes:
    """A cat crop like those of ``make_dataset_zip``, from a seed none of its archives use."""
    return next(_variants(data.chelsea(), 1, np.random.default_rng(99)))


def submit_finetune(
    base_url: str, archive: bytes, *, caller: Http = http, **fields: Any
) -> requests.Response:
    """``POST /jobs/finetune`` (as the admin unless ``caller`` says), with a quick training
    unless ``fields`` say otherwise.

    Args:
        base_url: the API's base URL.
        archive: the dataset zip.
        caller: whose key sends it.
        **fields: form fields (``model`` among them), over ``FINETUNE_FORM``.

    Returns:
        The API's answer, not checked.
    """
    form = {**FINETUNE_FORM, **{k: str(v) for k, v in fields.items()}}
    return caller.post(
        f"{base_url}/jobs/finetune",
        data=form,
        files={"dataset": ("pets.zip", archive, "application/zip")},
        timeout=30,
    )


def zip_archive(entries: dict[str, bytes]) -> bytes:
    """A zip file holding ``entries`` (name to content), as a client would upload it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def zip_with_symlink(entries: dict[str, bytes], link_name: str) -> bytes:
    """A zip of ``entries`` plus ``link_name``, marked as a symbolic link to ``/etc/passwd``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in entries.items():
            archive.writestr(name, payload)
        link = zipfile.ZipInfo(link_name)
        link.external_attr = 0o120777 << 16  # S_IFLNK: unzip would create a symbolic link
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()
