"""Fixtures of the container tests: podman with the images built, the stacks, a webhook receiver.

Where podman cannot run (not installed, not root) the tests skip and say why; with ``CI=true``
that is a failure instead, since CI must really run them. Host ports are free ones, never those
of ``make run`` (8000, 6379, 9100-9102), and each stack is removed with podman's leftovers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from imgq.local.supervisor import free_port
from tests.containers.podman import Podman, unavailable_reason
from tests.containers.smoke import Stack
from tests.support.http import Credentials, Http
from tests.support.images import jpeg_bytes
from tests.support.webhooks import Receiver


@pytest.fixture(scope="session")
def podman() -> Podman:
    """Podman configured for this machine, with the stand-ins and the project image built."""
    reason = unavailable_reason()
    if reason:
        message = f"podman cannot run imgq's containers here: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the container tests must run, not skip)")
        pytest.skip(message)
    podman = Podman()
    podman.build_project()
    for name, seconds in podman.timings.items():
        print(f"containers: built {name} in {seconds:.0f} s")
    return podman


@pytest.fixture(scope="session")
def container_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Credentials, Path]:
    """Keys of the container runs (not the session's: the suite's ``settings`` fixture makes
    its own) and the directory holding their keys file, readable by the image's user."""
    directory = tmp_path_factory.mktemp("container-keys")
    directory.chmod(0o755)
    credentials = Credentials()
    credentials.write_keys_file(directory / "api-keys.json")
    (directory / "api-keys.json").chmod(0o644)
    return credentials, directory


@pytest.fixture(scope="session")
def client(container_keys: tuple[Credentials, Path]) -> Http:
    """Requests as the container runs' admin."""
    return Http("admin", container_keys[0])


@pytest.fixture(scope="session")
def photo() -> bytes:
    """scikit-image's chelsea (a tabby cat) as JPEG."""
    from skimage import data

    return jpeg_bytes(data.chelsea())


@pytest.fixture(scope="module")
def receiver(stack: Stack) -> Iterator[tuple[str, Receiver]]:
    """A webhook receiver on this host's address on the stack's network; its URL."""
    server = HTTPServer(host=stack.gateway(), port=free_port())
    server.start()
    handler = Receiver()
    server.expect_request("/hook", method="POST").respond_with_handler(handler)
    yield server.url_for("/hook"), handler
    server.stop()


STACKS = ["compose", "kube"]


@pytest.fixture(scope="module", params=STACKS)
def stack(
    request: pytest.FixtureRequest,
    podman: Podman,
    container_keys: tuple[Credentials, Path],
    client: Http,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The compose stack, then the ``kube play`` one, each started, ready and removed after."""
    from tests.containers.compose import ComposeStack
    from tests.containers.kube import KubeStack

    directory = tmp_path_factory.mktemp(request.param)
    name = f"imgq-ct-{os.getpid()}"
    started: Stack = (
        ComposeStack(podman, directory, container_keys[1], name)
        if request.param == "compose"
        else KubeStack(podman, directory, container_keys, name)
    )
    try:
        started.start(client)
        yield started
    finally:
        started.save_logs(directory)
        print(f"containers: {request.param} logs in {directory}")
        started.down()
