"""Faults under a steady stream of predict jobs: nothing accepted is lost or answered twice.

Each test breaks one real process of a private stack while clients keep submitting, then
checks every ``202`` job: it ended ``succeeded``, with one prediction of its own image's class,
and that result stays the same once redelivered duplicates have had time to run. Each test
prints its figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import time

import pytest

from imgq.local.supervisor import wait_until
from imgq.redis_keys import REDUNDANT_RESULTS, job_record
from tests.chaos.stack import (
    CHAOS_VISIBILITY_TIMEOUT_S,
    Outcome,
    Stack,
    Stream,
    assert_each_job_has_its_own_result,
    settle,
    sigkill,
)
from tests.support.http import http

pytestmark = pytest.mark.e2e

CAT, ESPRESSO = 285, 967
"""ImageNet classes of scikit-image's chelsea and coffee."""


@pytest.fixture
def images(cat_jpeg: bytes, coffee_jpeg: bytes) -> list[tuple[bytes, int]]:
    """The stream's images with the class each must get."""
    return [(cat_jpeg, CAT), (coffee_jpeg, ESPRESSO)]


@pytest.fixture(autouse=True)
def fresh_counters(stack: Stack) -> None:
    """Each test reports its own count of discarded duplicate results."""
    stack.client.delete(REDUNDANT_RESULTS)


def assert_results_stable(stack: Stack, outcome: Outcome) -> None:
    """Redelivered messages run after a job ended; none may change what the job returned."""
    time.sleep(CHAOS_VISIBILITY_TIMEOUT_S + 2)
    for job_id, document in outcome.documents.items():
        again = http.get(f"{stack.api.url}/jobs/{job_id}").json()
        assert again["result"] == document["result"], job_id


def test_prediction_worker_killed_mid_batch(stack: Stack, images: list[tuple[bytes, int]]) -> None:
    with Stream(stack.api.url, images, rate_per_s=50) as stream:
        stream.wait_accepted(60)
        wait_until(lambda: stack.held() >= 3, 30, "a batch in the worker's hands")
        held = stack.held()
        sigkill(stack.predict)
        killed_at = time.time()
        stack.predict = stack.start_predict()
        stream.wait_accepted(len(stream.accepted) + 100)
    submissions = stream.submissions
    outcome = settle(stack.api.url, stack.client, submissions)
    assert_each_job_has_its_own_result(outcome, submissions)
    assert {s.status for s in submissions} == {202}  # the API never noticed
    before = [str(s.job_id) for s in stream.accepted if s.sent_at < killed_at]
    worst = max(outcome.latencies_s[job_id] for job_id in before)
    print(
        f"\nworker SIGKILL with {held} messages held: {outcome.summary(submissions)}; "
        f"max latency of jobs accepted before the kill {worst:.2f} s"
    )
    assert_results_stable(stack, outcome)


def test_graceful_shutdown_gives_back_what_it_holds(
    stack: Stack, images: list[tuple[bytes, int]]
) -> None:
    with Stream(stack.api.url, images, rate_per_s=50) as stream:
        stream.wait_accepted(60)
        wait_until(lambda: stack.held() >= 3, 30, "a batch in the worker's hands")
        held = stack.held()
        stopped_at = time.monotonic()
        stack.predict.stop(timeout_s=60)  # SIGTERM: Celery's warm shutdown
        stopped_in = time.monotonic() - stopped_at
        assert stack.predict.process.returncode == 0  # it left by itself, not SIGKILLed
        # Warm shutdown finished its batch and returned its prefetched messages at once:
        # nothing waits for the visibility timeout.
        assert stack.held() == 0
        stack.predict = stack.start_predict()
        stream.wait_accepted(len(stream.accepted) + 100)
    submissions = stream.submissions
    outcome = settle(stack.api.url, stack.client, submissions)
    assert_each_job_has_its_own_result(outcome, submissions)
    print(
        f"\nworker SIGTERM with {held} messages held, exited in {stopped_in:.1f} s: "
        f"{outcome.summary(submissions)}"
    )
    assert_results_stable(stack, outcome)


def test_redis_restarted_during_submissions(stack: Stack, images: list[tuple[bytes, int]]) -> None:
    with Stream(stack.api.url, images) as stream:
        stream.wait_accepted(50)
        stack.stop_redis()
        down_at = time.time()
        time.sleep(3)
        stack.start_redis()
        up_at = time.time()
        accepted_when_up = len(stream.accepted)
        stream.wait_accepted(accepted_when_up + 50)
    submissions = stream.submissions
    refused = [s for s in submissions if s.status != 202]
    assert refused, "no request reached the API while Redis was down"
    for submission in refused:
        assert submission.status == 503, submission
        assert submission.body["error"]["code"] == "service_unavailable", submission
        assert int(submission.headers["Retry-After"]) > 0
    outcome = settle(stack.api.url, stack.client, submissions)
    assert_each_job_has_its_own_result(outcome, submissions)
    for submission in stream.accepted:
        assert stack.client.exists(job_record(str(submission.job_id)))
    print(
        f"\nRedis down {up_at - down_at:.1f} s: {outcome.summary(submissions)}; 503s {len(refused)}"
    )
    assert_results_stable(stack, outcome)
