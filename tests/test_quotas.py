"""Per-client quotas and request rate, through a real gunicorn API with the default limits.

The session's API runs with its limits lifted (the suite's clients are not the ones under
test); this module starts a second API on the same Redis, store and prediction worker with the
defaults, so a flooding client meets them exactly as in production.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imgq.api_keys import Role
from imgq.local.supervisor import Service, free_port, start_api
from imgq.settings import Settings
from tests.support.http import Http, http

pytestmark = pytest.mark.e2e

bob, alice = http.as_client("bob"), http.as_client("alice")


@pytest.fixture(scope="module")
def bounded_api(
    settings: Settings, service_dir: Path, predict_worker: Service
) -> Iterator[tuple[str, Settings]]:
    """An API with the default quotas; yields its URL and settings."""
    defaults = Settings()
    bounded = settings.model_copy(
        update={
            name: getattr(defaults, name)
            for name in Settings.model_fields
            if name.startswith("quota_") or name == "max_top_k"
        }
    )
    port = free_port()
    service = start_api(bounded, service_dir, port)
    yield f"http://127.0.0.1:{port}", bounded
    service.stop()


def _image(cat_jpeg: bytes) -> str:
    return base64.b64encode(cat_jpeg).decode()


def _submit(base: str, caller: Http, image: str) -> requests.Response:
    return caller.post(f"{base}/jobs/predict", json={"images": [image]}, timeout=30)


def test_a_flood_gets_429_with_retry_after_and_another_clients_job_is_not_delayed(
    bounded_api: tuple[str, Settings], cat_jpeg: bytes
) -> None:
    base, bounded = bounded_api
    image = _image(cat_jpeg)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        flood = list(pool.map(lambda _: _submit(base, bob, image), range(300)))
    accepted = [r for r in flood if r.status_code == 202]
    refused = [r for r in flood if r.status_code == 429]
    assert accepted and refused and len(accepted) + len(refused) == len(flood)
    body = refused[0].json()["error"]
    assert body["code"] in ("quota_exceeded", "rate_limited")
    assert int(refused[0].headers["Retry-After"]) >= 1
    quota_refusal = next(r for r in refused if r.json()["error"]["code"] == "quota_exceeded")
    assert quota_refusal.json()["error"]["details"]["limit"] == "queued_images"
    # Alice's single job, sent while bob's admitted images wait: at most
    # quota_queued_images of them are ahead of it, a batch or two.
    submitted = time.time()
    job = _submit(base, alice, image)
    assert job.status_code == 202, job.text
    done = http.get(f"{base}/jobs/{job.json()['id']}", params={"wait": 60}, timeout=70).json()
    assert done["status"] == "succeeded"
    ahead = 0
    for response in accepted:
        other = http.get(f"{base}/jobs/{response.json()['id']}", timeout=10).json()
        finished = other["finished_at"]
        if finished is None or finished > done["finished_at"]:
            continue
        ahead += 1
    assert ahead <= bounded.quota_queued_images + bounded.max_batch_size
    assert time.time() - submitted < 60


def test_every_answer_carries_the_callers_rate_limit_budget(
    bounded_api: tuple[str, Settings],
) -> None:
    base, bounded = bounded_api
    response = alice.get(f"{base}/jobs", timeout=10)
    assert response.status_code == 200
    assert response.headers["RateLimit-Limit"] == str(bounded.quota_burst)
    assert 0 <= int(response.headers["RateLimit-Remaining"]) < bounded.quota_burst
    assert "RateLimit-Policy" in response.headers


def test_a_burst_past_the_rate_is_refused_with_retry_after(
    bounded_api: tuple[str, Settings],
) -> None:
    base, bounded = bounded_api
    caller = http.as_client("bob")
    codes = [caller.get(f"{base}/jobs", timeout=10) for _ in range(bounded.quota_burst + 20)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes][-5:]
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert int(limited[0].headers["Retry-After"]) >= 1


def test_top_k_over_the_maximum_is_a_validation_error(
    bounded_api: tuple[str, Settings], cat_jpeg: bytes
) -> None:
    base, bounded = bounded_api
    response = http.post(
        f"{base}/jobs/predict",
        json={"images": [_image(cat_jpeg)], "top_k": bounded.max_top_k + 1},
        timeout=30,
    )
    assert response.status_code == 422
    assert "top_k" in response.json()["error"]["details"]


def test_a_keys_own_quota_overrides_the_defaults(
    settings: Settings, tmp_path: Path, cat_jpeg: bytes
) -> None:
    from api.app import create_app
    from imgq.api_keys import new_key

    key, entry = new_key("roomy", Role.CLIENT)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{**entry.to_entry(), "quotas": {"burst": 3, "rate_per_s": 0.01}}]))
    app = create_app(settings.model_copy(update={"api_keys_file": keys}))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    answers = [client.get("/jobs", headers=headers) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3"
