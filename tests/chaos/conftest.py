"""The private stack of the fault tests, with timeouts short enough for a test run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imgq.local.supervisor import free_port
from imgq.settings import Settings
from tests.chaos.stack import CHAOS_VISIBILITY_TIMEOUT_S, Stack


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, API, a prediction worker and a webhooks worker that the tests may break."""
    directory = tmp_path_factory.mktemp("chaos")
    own = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
            "redis_dir": directory / "redis",
            "model_store": str(directory / "models"),
            "upload_dir": directory / "uploads",
            "ready_file": directory / "predict-ready",
            "metrics_port": 0,
            "visibility_timeout_s": CHAOS_VISIBILITY_TIMEOUT_S,
            "unacked_restore_interval_s": 1,
            "predict_check_interval_s": 3,
        }
    )
    stack = Stack(own, directory)
    yield stack
    stack.close()
