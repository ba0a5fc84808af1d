"""Two of each against one Redis: work spreads, swaps reach everyone, nothing happens twice.

Two APIs (separate gunicorns), two prediction workers and two webhooks workers, each of the
latter with its own delivery scheduler and reaper, share one private Redis
(``tests.chaos.fleet``). Every job of the streams asks for a webhook, and the receiver counts
deliveries per ``Imgq-Event-Id``. The tests run in order on the same processes:

* jobs submitted through both APIs are completed by both prediction workers (each worker's
  ``imgq_worker_jobs_finished_total``, summed, is exactly the number of jobs), and each
  webhook arrives once, from one attempt;
* a version activated through one API is served by both prediction workers;
* two reapers side by side resend a lost message once, fail an overdue job once and a
  silent fine-tune once (their failure counters, summed, are exactly the number of jobs);
* a delivery whose webhooks worker died mid-attempt is sent once, after its lease;
* SIGKILL of one API, one prediction worker and one webhooks worker mid-stream loses no
  accepted job, and every webhook is delivered: at least once, as ``imgq.webhooks.schedule``
  promises, any repeat with the same ``Imgq-Event-Id``, and no more repeats than the killed
  worker had attempts in hand.

Each test prints its figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from imgq import redis_keys
from imgq.errors import WorkerLost
from imgq.jobs.status import JobStatus, JobType
from imgq.jobs.store import JobStore, new_job_id
from imgq.local.commands import webhooks_worker_argv
from imgq.local.supervisor import free_port, wait_until
from imgq.settings import Settings
from imgq.webhooks.schedule import DeliveryStore
from ml.registry import BUILTIN_MODEL_ID
from tests.chaos.fleet import (
    DELIVERED,
    JOBS_COMPLETED,
    Fleet,
    accepted_ids,
    delivered_by_job,
    reaped,
    run_streams,
    sample,
    sigkill_tree,
)
from tests.chaos.stack import (
    CHAOS_VISIBILITY_TIMEOUT_S,
    Stream,
    assert_each_job_has_its_own_result,
    chaos_settings,
    settle,
)
from tests.support.http import http
from tests.support.webhooks import Receiver

pytestmark = pytest.mark.e2e

CAT, ESPRESSO = 285, 967
"""ImageNet classes of scikit-image's chelsea and coffee."""
LEASE_S = 4
"""``IMGQ_WEBHOOK_LEASE_S`` here: a delivery a killed worker held is sent again this soon."""
RESTORE_MUTEX_S = 10
"""kombu's unacked-restore mutex (``imgq.queueing``): held by a killed worker, it delays the
next restore this long."""
SERVED_VERSION = 'imgq_worker_model_version{model="imagenet",owner="system"}'


@pytest.fixture(scope="module")
def fleet(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The two of each, with the fault tests' short timeouts."""
    directory = tmp_path_factory.mktemp("two-of-each")
    own = chaos_settings(
        settings,
        directory,
        webhook_connect_timeout_s=1.0,
        webhook_read_timeout_s=1.5,
        webhook_attempt_deadline_s=2.0,
        webhook_lease_s=LEASE_S,
    )
    fleet = Fleet.start(own, directory)
    yield fleet
    fleet.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, Receiver]]:
    """A webhook receiver answering 200 to everything; yields its URL and its record."""
    server = HTTPServer(host="127.0.0.1", port=free_port(), threaded=True)
    server.start()
    record = Receiver()
    server.expect_request("/hook", method="POST").respond_with_handler(record)
    yield server.url_for("/hook"), record
    server.stop()


@pytest.fixture
def images(cat_jpeg: bytes, coffee_jpeg: bytes) -> list[tuple[bytes, int]]:
    """The streams' images with the class each must get."""
    return [(cat_jpeg, CAT), (coffee_jpeg, ESPRESSO)]


def both_apis(fleet: Fleet, images: list[tuple[bytes, int]], callback: str) -> list[Stream]:
    """A stream of jobs with webhooks through each API (not started)."""
    return [
        Stream(api.url, images, rate_per_s=10, threads=2, fields={"callback_url": callback})
        for api in fleet.apis
    ]


def test_jobs_through_both_apis_spread_over_both_workers_and_each_webhook_arrives_once(
    fleet: Fleet, receiver: tuple[str, Receiver], images: list[tuple[bytes, int]]
) -> None:
    callback, record = receiver
    completed = [sample(worker, JOBS_COMPLETED) for worker in fleet.predicts]
    sent = [sample(worker, DELIVERED) for worker in fleet.hooks]
    streams = both_apis(fleet, images, callback)
    submissions = run_streams(streams, 40)
    assert {s.status for s in submissions} == {202}
    outcome = settle(fleet.apis[0].url, fleet.client, submissions)
    assert_each_job_has_its_own_result(outcome, submissions)
    job_ids = accepted_ids(submissions)
    per_worker = [
        sample(worker, JOBS_COMPLETED) - before
        for worker, before in zip(fleet.predicts, completed, strict=True)
    ]
    assert all(count > 0 for count in per_worker), per_worker
    assert sum(per_worker) == len(job_ids)  # each job completed by exactly one worker

    per_job = delivered_by_job(fleet.client, record, job_ids)
    assert set(per_job.values()) == {1}, per_job.most_common(3)
    attempts = [
        sample(worker, DELIVERED) - before for worker, before in zip(fleet.hooks, sent, strict=True)
    ]
    assert sum(attempts) == len(job_ids)  # one attempt each, whichever worker made it
    print(
        f"\ntwo of each: {len(job_ids)} jobs "
        f"({', '.join(str(len(s.accepted)) for s in streams)} per API), "
        f"completed per prediction worker {per_worker}, "
        f"delivered per webhooks worker {attempts}, deliveries per job {set(per_job.values())}"
    )


def test_an_activated_version_reaches_both_prediction_workers(
    fleet: Fleet, receiver: tuple[str, Receiver], images: list[tuple[bytes, int]]
) -> None:
    versions = Path(fleet.settings.model_store) / BUILTIN_MODEL_ID
    meta = json.loads((versions / "1" / "meta.json").read_text())
    (versions / "2").mkdir()  # the built-in's weights again: a second version to swap to
    (versions / "2" / "meta.json").write_text(json.dumps({**meta, "version": 2}))
    activated = http.post(f"{fleet.apis[1].url}/models/imagenet/versions/2/activate")
    assert activated.status_code == 200, activated.text
    assert activated.json()["active_version"] == 2
    swapped_at = time.monotonic()
    wait_until(
        lambda: all(sample(worker, SERVED_VERSION) == 2 for worker in fleet.predicts),
        60,
        "both prediction workers serving version 2",
    )
    swapped_in = time.monotonic() - swapped_at

    completed = [sample(worker, JOBS_COMPLETED) for worker in fleet.predicts]
    submissions = run_streams(both_apis(fleet, images, receiver[0]), 20)
    outcome = settle(fleet.apis[0].url, fleet.client, submissions)
    assert_each_job_has_its_own_result(outcome, submissions)
    assert {d["result"]["version"] for d in outcome.documents.values()} == {2}
    per_worker = [
        sample(worker, JOBS_COMPLETED) - before
        for worker, before in zip(fleet.predicts, completed, strict=True)
    ]
    assert all(count > 0 for count in per_worker), per_worker
    print(
        f"\nversion 2 served by both prediction workers {swapped_in:.1f} s after activation; "
        f"then {len(outcome.documents)} jobs, all on version 2, completed per worker {per_worker}"
    )


def test_two_reapers_reap_each_job_once(
    fleet: Fleet, receiver: tuple[str, Receiver], cat_jpeg: bytes
) -> None:
    callback, record = receiver
    client, settings = fleet.client, fleet.settings
    store = JobStore(client, settings.job_ttl_s)

    def predict_job(deadline_s: float, check_after_s: float) -> str:
        job_id = new_job_id()  # stored as the API stores it, but no message is ever sent
        store.create_predict_job(
            job_id, [cat_jpeg], BUILTIN_MODEL_ID, None, 1, client="admin",
            deadline_s=deadline_s, check_after_s=check_after_s, callback_url=callback,
        )  # fmt: skip
        return job_id

    def silent_finetune() -> str:
        job_id = new_job_id()  # a running fine-tune whose worker died long ago
        store.create_job(job_id, JobType.FINETUNE, {}, client="admin", callback_url=callback)
        store.mark_running([job_id])
        client.zadd(redis_keys.HEARTBEATS, {job_id: time.time() - 10 * 3600})
        return job_id

    failed_before = [
        (
            sample(w, reaped("predict", "deadline_exceeded")),
            sample(w, reaped("finetune", "worker_lost")),
        )
        for w in fleet.hooks
    ]
    resent_before = int(client.get(redis_keys.RESENT_IMAGES) or 0)
    lost = [predict_job(deadline_s=60, check_after_s=0.2) for _ in range(10)]
    overdue = [predict_job(deadline_s=1, check_after_s=1.5) for _ in range(10)]
    silent = [silent_finetune() for _ in range(5)]
    jobs = [*lost, *overdue, *silent]

    def status(job_id: str) -> str:
        value = client.hget(redis_keys.job_record(job_id), "status")
        return value.decode() if isinstance(value, bytes) else str(value or "")

    wait_until(lambda: all(JobStatus(status(j)).is_terminal for j in jobs), 60, "reaped jobs")
    assert {status(job_id) for job_id in lost} == {"succeeded"}
    assert {status(job_id) for job_id in [*overdue, *silent]} == {"failed"}
    requeues = [client.hget(redis_keys.job_record(job_id), "requeues") for job_id in lost]
    assert set(requeues) == {b"1"}  # one reaper resent each lost message, once
    assert int(client.get(redis_keys.RESENT_IMAGES) or 0) - resent_before == len(lost)
    failed = [
        (
            sample(w, reaped("predict", "deadline_exceeded")) - overdue_before,
            sample(w, reaped("finetune", "worker_lost")) - silent_before,
        )
        for w, (overdue_before, silent_before) in zip(fleet.hooks, failed_before, strict=True)
    ]
    assert sum(o for o, _ in failed) == len(overdue)  # each failed by one reaper, once
    assert sum(s for _, s in failed) == len(silent)
    per_job = delivered_by_job(client, record, jobs)
    assert set(per_job.values()) == {1}, per_job.most_common(3)
    print(
        f"\ntwo reapers: {len(lost)} lost messages resent once each, "
        f"overdue and silent jobs failed per reaper {failed}, one webhook each"
    )


def test_a_delivery_whose_worker_died_mid_attempt_is_sent_once_its_lease_ends(
    fleet: Fleet, receiver: tuple[str, Receiver]
) -> None:
    callback, record = receiver
    store = JobStore(fleet.client, fleet.settings.job_ttl_s)
    job_id = new_job_id()
    store.create_job(job_id, JobType.FINETUNE, {}, client="admin", callback_url=callback)
    # What a webhooks worker killed mid-attempt leaves behind: the job's attempt lock, held
    # for a lease; the live workers' scheduler then leases the delivery and its task finds the
    # lock taken, as a redelivered message of the dead worker would.
    DeliveryStore(fleet.client, fleet.settings.job_ttl_s, LEASE_S).lock(job_id)
    locked_at = time.monotonic()
    assert store.fail(job_id, WorkerLost.after_silence(0))
    assert delivered_by_job(fleet.client, record, [job_id]) == Counter({job_id: 1})
    print(f"\ndelivery held by a dead worker sent after {time.monotonic() - locked_at:.1f} s")


def test_killing_one_of_each_mid_stream_loses_nothing(
    fleet: Fleet, receiver: tuple[str, Receiver], images: list[tuple[bytes, int]]
) -> None:
    callback, record = receiver
    dead_api, live_api = fleet.apis
    streams = both_apis(fleet, images, callback)
    with ExitStack() as running:
        for stream in streams:
            running.enter_context(stream)
        for stream in streams:
            stream.wait_accepted(20)
        wait_until(lambda: fleet.client.hlen(redis_keys.KOMBU_UNACKED) >= 3, 30, "messages held")
        held = int(fleet.client.hlen(redis_keys.KOMBU_UNACKED))
        for service in (fleet.predicts[0], fleet.hooks[0], dead_api):
            sigkill_tree(service)
        killed_at = time.monotonic()
        streams[1].wait_accepted(len(streams[1].accepted) + 40)
    submissions = [submission for stream in streams for submission in stream.submissions]
    refused = [s for s in submissions if s.status != 202]
    # Only the killed API's clients saw errors: connections refused or cut, never an answer.
    assert refused, "the killed API still answered"
    assert {s.status for s in refused} == {0}
    assert all(s in streams[0].submissions for s in refused)
    outcome = settle(live_api.url, fleet.client, submissions)
    assert_each_job_has_its_own_result(outcome, submissions)
    job_ids = accepted_ids(submissions)

    per_job = delivered_by_job(fleet.client, record, job_ids)
    repeats = sum(count - 1 for count in per_job.values())
    argv = webhooks_worker_argv(fleet.settings)
    in_hand = int(argv[argv.index("--concurrency") + 1])  # attempts one worker runs at once
    assert repeats <= in_hand, per_job.most_common(in_hand + 1)
    # The killed workers' messages and leases have all come back by then; none may send a
    # webhook again or change a result.
    settled_by = killed_at + max(CHAOS_VISIBILITY_TIMEOUT_S + RESTORE_MUTEX_S, 2 * LEASE_S) + 2
    time.sleep(max(0.0, settled_by - time.monotonic()))
    assert delivered_by_job(fleet.client, record, job_ids) == per_job
    for job_id, document in outcome.documents.items():
        again = http.get(f"{live_api.url}/jobs/{job_id}").json()
        assert again["result"] == document["result"], job_id
    print(
        f"\nSIGKILL of one API, one prediction worker ({held} messages held) and one webhooks "
        f"worker: {outcome.summary(submissions)}; refused {len(refused)} (the killed API's); "
        f"webhooks delivered for all {len(job_ids)} jobs, {repeats} repeated"
    )
