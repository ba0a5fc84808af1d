"""The private stack of the fault tests, with timeouts short enough for a test run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imgq.settings import Settings
from tests.chaos.stack import Stack, chaos_settings


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, API, a prediction worker and a webhooks worker that the tests may break."""
    directory = tmp_path_factory.mktemp("chaos")
    own = chaos_settings(
        settings, directory, ready_file=directory / "predict-ready", metrics_port=0
    )
    stack = Stack(own, directory)
    yield stack
    stack.close()
