"""The ``Delivery`` state machine: outcomes, the jittered retry schedule, ``Retry-After``, 410
and redeliveries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from imgq.webhooks.delivery import (
    JITTER,
    AttemptOutcome,
    Delivery,
    DeliveryState,
    parse_retry_after,
    retry_delay,
    stretched_delay,
)

SCHEDULE = [0.0, 30.0, 120.0]
NOW = 1_000.0


def _delivery() -> Delivery:
    return Delivery.for_job(
        "job-1", {"callback_url": "https://example.com/hook", "client": "alice", "status": "done"}
    )


def _attempt(number: int, **result: Any) -> dict[str, Any]:
    return {"at": NOW + number, "duration_ms": 1.0, **result}


def _within_jitter(delay: float, nominal: float) -> bool:
    return nominal * (1 - JITTER) <= delay <= nominal * (1 + JITTER)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, AttemptOutcome.DELIVERED),
        (204, AttemptOutcome.DELIVERED),
        (299, AttemptOutcome.DELIVERED),
        (429, AttemptOutcome.RETRY),
        (500, AttemptOutcome.RETRY),
        (503, AttemptOutcome.RETRY),
        (301, AttemptOutcome.FAILED),
        (400, AttemptOutcome.FAILED),
        (404, AttemptOutcome.FAILED),
        (410, AttemptOutcome.GONE),
        (199, AttemptOutcome.FAILED),
    ],
)
def test_status_codes_map_to_delivered_retry_gone_or_failed(
    status: int, outcome: AttemptOutcome
) -> None:
    assert AttemptOutcome.of_status(status) is outcome


def test_a_new_delivery_is_pending_with_an_event_id_of_job_and_status() -> None:
    delivery = _delivery()

    assert delivery.state is DeliveryState.PENDING
    assert delivery.event_id == "job-1.done"
    assert delivery.webhook_id == "job_job-1"  # no dot, as the Standard Webhooks id must
    assert delivery.client == "alice"
    assert not delivery.ended


@pytest.mark.parametrize(
    ("status", "state"), [(200, DeliveryState.DELIVERED), (404, DeliveryState.FAILED)]
)
def test_a_final_status_ends_the_delivery_at_once_and_schedules_nothing(
    status: int, state: DeliveryState
) -> None:
    delivery = _delivery()

    due = delivery.record(
        AttemptOutcome.of_status(status), _attempt(1, status_code=status), SCHEDULE, NOW
    )

    assert due is None
    assert delivery.state is state
    assert delivery.next_attempt_at is None
    assert delivery.ended


@pytest.mark.parametrize(
    "attempt",
    [_attempt(1, status_code=429), _attempt(1, status_code=503), _attempt(1, error="OSError")],
)
def test_a_retryable_attempt_is_retried_after_the_next_jittered_delay(
    attempt: dict[str, Any],
) -> None:
    delivery = _delivery()
    outcome = (
        AttemptOutcome.of_status(attempt["status_code"])
        if "status_code" in attempt
        else AttemptOutcome.RETRY  # how a connection error or timeout is classified
    )

    due = delivery.record(outcome, attempt, SCHEDULE, NOW)

    assert delivery.state is DeliveryState.RETRYING
    assert due is not None
    assert due == delivery.next_attempt_at
    assert _within_jitter(due - NOW, SCHEDULE[1])
    assert not delivery.ended


def test_each_retry_waits_for_the_next_entry_of_the_schedule() -> None:
    delivery = _delivery()
    delivery.record(AttemptOutcome.RETRY, _attempt(1, status_code=500), SCHEDULE, NOW)

    due = delivery.record(AttemptOutcome.RETRY, _attempt(2, status_code=500), SCHEDULE, NOW)

    assert due is not None
    assert _within_jitter(due - NOW, SCHEDULE[2])


def test_a_retryable_attempt_fails_the_delivery_once_the_schedule_runs_out() -> None:
    delivery = _delivery()
    for number in range(len(SCHEDULE) - 1):
        delivery.record(AttemptOutcome.RETRY, _attempt(number, status_code=500), SCHEDULE, NOW)
    assert not delivery.ended

    due = delivery.record(AttemptOutcome.RETRY, _attempt(9, status_code=500), SCHEDULE, NOW)

    assert due is None
    assert delivery.state is DeliveryState.FAILED
    assert delivery.next_attempt_at is None
    assert len(delivery.attempts) == len(SCHEDULE)


def test_a_delivery_after_retries_clears_the_next_attempt_time() -> None:
    delivery = _delivery()
    delivery.record(AttemptOutcome.RETRY, _attempt(1, status_code=503), SCHEDULE, NOW)

    due = delivery.record(AttemptOutcome.DELIVERED, _attempt(2, status_code=200), SCHEDULE, NOW)

    assert due is None
    assert delivery.state is DeliveryState.DELIVERED
    assert delivery.next_attempt_at is None


def test_redelivery_starts_a_fresh_round_and_keeps_earlier_attempts() -> None:
    delivery = _delivery()
    for number in range(len(SCHEDULE)):
        delivery.record(AttemptOutcome.RETRY, _attempt(number, status_code=500), SCHEDULE, NOW)
    assert delivery.ended  # the schedule ran out

    delivery.redeliver()

    assert delivery.state is DeliveryState.PENDING
    assert delivery.next_attempt_at is None
    assert delivery.round_start == len(SCHEDULE)
    assert not delivery.ended
    due = delivery.record(AttemptOutcome.RETRY, _attempt(10, status_code=500), SCHEDULE, NOW)
    assert due is not None
    assert _within_jitter(due - NOW, SCHEDULE[1])  # numbered from the round's start
    assert len(delivery.attempts) == len(SCHEDULE) + 1


def test_a_redelivered_round_gets_the_whole_schedule_again() -> None:
    delivery = _delivery()
    delivery.record(AttemptOutcome.FAILED, _attempt(1, status_code=400), SCHEDULE, NOW)
    delivery.redeliver()

    states = []
    for number in range(len(SCHEDULE)):
        delivery.record(AttemptOutcome.RETRY, _attempt(number, status_code=500), SCHEDULE, NOW)
        states.append(delivery.state)

    assert states == [DeliveryState.RETRYING, DeliveryState.RETRYING, DeliveryState.FAILED]


def test_public_form_hides_the_client_and_round_bookkeeping() -> None:
    delivery = _delivery()
    delivery.record(AttemptOutcome.RETRY, _attempt(1, status_code=500), SCHEDULE, NOW)

    public = delivery.public()

    assert public == {
        "url": "https://example.com/hook",
        "state": "retrying",
        "attempts": [_attempt(1, status_code=500)],
        "event_id": "job-1.done",
        "webhook_id": "job_job-1",
        "next_attempt_at": delivery.next_attempt_at,
        "disabled_reason": None,
    }
    json.dumps(public)  # what the API serialises as is


def test_stored_form_round_trips_every_field() -> None:
    delivery = _delivery()
    delivery.record(AttemptOutcome.FAILED, _attempt(1, status_code=400), SCHEDULE, NOW)
    delivery.redeliver()
    delivery.record(AttemptOutcome.RETRY, _attempt(2, error="TimeoutError"), SCHEDULE, NOW)

    restored = Delivery.from_json(delivery.to_json())

    assert restored == delivery
    assert restored.state is DeliveryState.RETRYING
    assert Delivery.from_json(delivery.to_json().encode()) == delivery


def test_stored_form_without_optional_fields_reads_as_a_first_round() -> None:
    stored = json.dumps(
        {"url": "https://example.com/hook", "event_id": "j.done", "state": "pending"}
    )

    restored = Delivery.from_json(stored)

    assert restored == Delivery("https://example.com/hook", "", "j.done")


def test_retry_delay_is_none_past_the_schedule_and_jittered_within_it() -> None:
    assert retry_delay(SCHEDULE, len(SCHEDULE)) is None
    assert retry_delay(SCHEDULE, 0) == 0.0
    delays = [retry_delay(SCHEDULE, 2) for _ in range(50)]
    assert all(delay is not None and _within_jitter(delay, SCHEDULE[2]) for delay in delays)
    assert len(set(delays)) > 1


def test_a_410_disables_the_delivery_with_a_reason_and_a_redelivery_enables_it() -> None:
    delivery = _delivery()

    due = delivery.record(
        AttemptOutcome.of_status(410), _attempt(1, status_code=410), SCHEDULE, NOW
    )

    assert due is None
    assert delivery.state is DeliveryState.DISABLED and delivery.ended
    assert delivery.public()["state"] == "disabled"
    assert "410 Gone" in str(delivery.public()["disabled_reason"])
    assert Delivery.from_json(delivery.to_json()) == delivery
    delivery.redeliver()
    assert delivery.public()["state"] == "pending" and delivery.disabled_reason is None
    assert not delivery.ended


def test_a_stored_delivery_without_a_webhook_id_gets_the_one_of_its_job_or_event() -> None:
    job = Delivery.from_json('{"url": "u", "event_id": "abc123.succeeded", "state": "failed"}')
    event = Delivery.from_json(
        '{"url": "u", "event_id": "evt_ff.model.drift_detected", "state": "retrying"}'
    )

    assert job.webhook_id == "job_abc123"
    assert event.webhook_id == "evt_ff"  # the event's own id, as its body's "id"


LONG = [0.0, 30.0, 120.0, 600.0, 1800.0]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 0 ", 0.0), (None, None), ("soon", None), ("-5", None), ("1.5", None)],
)
def test_retry_after_in_seconds_is_read_and_anything_else_ignored(
    value: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_as_an_http_date_is_the_seconds_until_then() -> None:
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2026, 5, 1, 12, 10, 0, tzinfo=UTC), usegmt=True)

    assert parse_retry_after(later, now) == 600.0
    assert parse_retry_after("Fri, 01 May 2026 11:00:00 GMT", now) == 0.0  # already past


def test_retry_after_longer_than_the_delay_is_waited_and_uses_up_the_slots_it_passes() -> None:
    assert stretched_delay(LONG, 1, 60.0) == (60.0, 0)  # slot 1 later; slot 2 still to come
    assert stretched_delay(LONG, 1, 200.0) == (200.0, 1)  # past slot 2's time: slot 2 is used
    assert stretched_delay(LONG, 1, 99_999.0) == (sum(LONG[1:]), 3)  # capped: the last slot


def test_a_retry_after_within_the_window_moves_the_next_attempt_later() -> None:
    delivery = _delivery()

    due = delivery.record(
        AttemptOutcome.RETRY, _attempt(1, status_code=503), LONG, NOW, retry_after_s=200.0
    )

    assert due == NOW + 200.0
    assert delivery.slots_skipped == 1
    due = delivery.record(AttemptOutcome.RETRY, _attempt(2, status_code=500), LONG, NOW)
    assert due is not None and _within_jitter(due - NOW, LONG[3])  # slot 2 was used up


def test_a_retry_after_past_the_window_gets_one_last_attempt_at_its_end() -> None:
    delivery = _delivery()

    due = delivery.record(
        AttemptOutcome.RETRY, _attempt(1, status_code=429), LONG, NOW, retry_after_s=86_400.0
    )

    assert due == NOW + sum(LONG[1:])  # never beyond what the schedule allows
    assert delivery.record(AttemptOutcome.RETRY, _attempt(2, status_code=429), LONG, NOW) is None
    assert delivery.state is DeliveryState.FAILED
    assert len(delivery.attempts) == 2


def test_a_retry_after_shorter_than_the_delay_changes_nothing() -> None:
    delivery = _delivery()

    due = delivery.record(
        AttemptOutcome.RETRY, _attempt(1, status_code=503), LONG, NOW, retry_after_s=1.0
    )

    assert due is not None and _within_jitter(due - NOW, LONG[1])
    assert delivery.slots_skipped == 0


def test_a_redelivery_gets_back_the_slots_a_retry_after_used_up() -> None:
    delivery = _delivery()
    delivery.record(AttemptOutcome.RETRY, _attempt(1, status_code=503), LONG, NOW, 86_400.0)
    delivery.record(AttemptOutcome.RETRY, _attempt(2, status_code=503), LONG, NOW)
    assert delivery.state is DeliveryState.FAILED

    delivery.redeliver()

    assert delivery.slots_skipped == 0
    restored = Delivery.from_json(delivery.to_json())
    assert restored == delivery
