"""The images built from ``docker/Dockerfile`` and run: compose, then ``podman kube play``.

Each stack gets the same smoke test from outside (``tests.containers.smoke``), in this order,
the kill last. Figures are printed (``-s`` shows them); ``docker/README.md`` and
``deploy/README.md`` quote them.
"""

from __future__ import annotations

import pytest

from tests.containers import smoke
from tests.containers.smoke import Stack
from tests.support.http import Http
from tests.support.webhooks import Receiver

# Building the images the first time (no layer cache) takes minutes before the first test.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1500)]


def test_stack_is_ready(stack: Stack) -> None:
    print(f"containers: {stack.kind} up in {stack.timings['up_s']:.0f} s, "
          f"ready (API, model warm) {stack.timings['ready_s']:.0f} s after the start")  # fmt: skip
    assert set(smoke.IMGQ_ROLES) <= set(stack.containers)


def test_photo_is_classified_with_the_baked_in_weights(
    stack: Stack, client: Http, photo: bytes
) -> None:
    smoke.check_photo_classified(client, stack.api, photo)


def test_tiny_finetune_becomes_a_version_the_prediction_worker_serves(
    stack: Stack, client: Http, photo: bytes
) -> None:
    seconds = smoke.check_finetune_served(client, stack.api, photo)
    print(f"containers: {stack.kind} fine-tune submitted to served in {seconds:.0f} s")


def test_signed_webhook_reaches_a_receiver_on_this_host(
    stack: Stack, client: Http, photo: bytes, receiver: tuple[str, Receiver]
) -> None:
    url, handler = receiver
    smoke.check_signed_webhook(client, stack.api, photo, url, handler.requests)


def test_every_imgq_container_serves_metrics(stack: Stack) -> None:
    counts = smoke.check_metrics(stack)
    print(f"containers: {stack.kind} imgq_ metric families per container {counts}")


def test_healthchecks_pass(stack: Stack) -> None:
    smoke.check_healthchecks(stack)


def test_killed_prediction_worker_loses_no_accepted_job(
    stack: Stack, client: Http, photo: bytes
) -> None:
    figures = smoke.check_killed_worker_loses_nothing(stack, client, photo)
    print(f"containers: {stack.kind} SIGKILL of the prediction worker: {figures}")
    assert figures["lost"] == 0
