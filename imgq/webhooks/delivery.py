"""One job's webhook delivery and its state machine; the retry schedule lives here.

::

    pending --attempt--> delivered                (2xx)
       |                 failed                   (any other status, a bad URL, or the
       |                                           schedule ran out)
       |                 disabled                 (410 Gone: the receiver wants no more)
       +-----------> retrying --attempt--> ...    (timeout, connection error, 429, 5xx)

    delivered / failed / disabled --redeliver--> pending   (a fresh round of the schedule)

Attempt ``n`` of a round waits ``IMGQ_WEBHOOK_RETRY_SCHEDULE_S[n]`` seconds, jittered by
``JITTER`` either way so that a receiver coming back is not stampeded; when the schedule has
no entry left, a retryable outcome fails the delivery. Every attempt is kept (time, status code
or error, duration) and shown under ``webhook`` in ``GET /jobs/<id>``.

A ``Retry-After`` on a 429 or 503 (seconds or an HTTP date) makes the next attempt wait that
long if that is longer than the schedule's delay, but never past the round's remaining window
(the sum of the schedule's delays still to come): the slots the wait passes over are used up,
so a round still makes at most one attempt per schedule entry and lasts no longer than the
schedule. A receiver asking for more than the window gets one last attempt at its end.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC
from enum import StrEnum
from typing import Any

from imgq.webhooks.standard import webhook_id

JITTER = 0.2
"""Retry delays vary by up to this fraction either way, so failed receivers are not stampeded."""
RETRY_AFTER_STATUSES = frozenset({429, 503})
"""Statuses whose ``Retry-After`` header is honoured (the Standard Webhooks advice)."""
GONE_REASON = "the receiver answered 410 Gone: its callback is disabled until a redelivery"
"""``disabled_reason`` of a delivery a 410 ended."""


class DeliveryState(StrEnum):
    """Where a delivery stands; ``delivered``, ``failed`` and ``disabled`` end it until a
    redelivery."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    DISABLED = "disabled"


class AttemptOutcome(StrEnum):
    """What one attempt came to."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    GONE = "gone"

    @classmethod
    def of_status(cls, status: int) -> AttemptOutcome:
        """2xx delivers; 429 and 5xx are worth retrying; 410 disables the callback; anything
        else will not get better."""
        if 200 <= status < 300:
            return cls.DELIVERED
        if status == 410:
            return cls.GONE
        return cls.RETRY if status == 429 or status >= 500 else cls.FAILED


def retry_delay(schedule: list[float], attempt: int) -> float | None:
    """Seconds before attempt number ``attempt`` (0-based), jittered; None when none is left."""
    if attempt >= len(schedule):
        return None
    return schedule[attempt] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks the sender to wait.

    Args:
        value: the header as received (delta-seconds or an HTTP date), or None.
        now: Unix seconds, for a date.

    Returns:
        Zero or more seconds; None when the header is absent or unreadable (then the schedule
        alone decides).
    """
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" or an obsolete zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def stretched_delay(schedule: list[float], slot: int, wanted: float) -> tuple[float, int]:
    """The wait a ``Retry-After`` of ``wanted`` seconds gets before schedule slot ``slot``.

    The wait is ``wanted``, capped at the slots still to come (their delays summed); the
    attempt then takes the last slot due by that time, and the ones before it are used up.

    Args:
        schedule: the retry schedule's delays.
        slot: the schedule index the next attempt would use (``< len(schedule)``).
        wanted: the seconds the receiver asked for.

    Returns:
        The wait in seconds, and how many slots it passes over.
    """
    due, last = schedule[slot], slot
    window = sum(schedule[slot:])
    wait = min(wanted, window)
    while last + 1 < len(schedule) and due + schedule[last + 1] <= wait:
        last += 1
        due += schedule[last]
    return wait, last - slot


@dataclass
class Delivery:
    """A job's webhook: where it goes, whose secret signs it, and every attempt so far."""

    url: str
    client: str
    event_id: str
    """``<job id>.<status>``: the same on every attempt, so receivers deduplicate on it."""
    state: DeliveryState = DeliveryState.PENDING
    attempts: list[dict[str, Any]] = field(default_factory=list)
    next_attempt_at: float | None = None
    round_start: int = 0
    """Index in ``attempts`` where the current round (first delivery or a redelivery) began."""
    webhook_id: str = ""
    """The Standard Webhooks ``webhook-id`` (``imgq.webhooks.standard.webhook_id``)."""
    slots_skipped: int = 0
    """Schedule entries of this round a ``Retry-After`` wait passed over."""
    disabled_reason: str | None = None
    """Why the delivery is ``disabled``."""

    def __post_init__(self) -> None:
        if not self.webhook_id:  # stored before webhook-id existed: ``<delivery id>.<status>``
            self.webhook_id = webhook_id(self.event_id.partition(".")[0])

    @classmethod
    def for_job(cls, job_id: str, fields: dict[str, str]) -> Delivery:
        """The first delivery of an ended job (or a model event), from its record."""
        return cls(
            url=fields["callback_url"],
            client=fields.get("client", ""),
            event_id=f"{job_id}.{fields['status']}",
            webhook_id=webhook_id(job_id),
        )

    @property
    def ended(self) -> bool:
        """Whether no attempt is due (until someone asks for a redelivery)."""
        return self.state in (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.DISABLED)

    def record(
        self,
        outcome: AttemptOutcome,
        attempt: dict[str, Any],
        schedule: list[float],
        now: float,
        retry_after_s: float | None = None,
    ) -> float | None:
        """Apply one attempt's outcome; returns when the next attempt is due, or None.

        ``retry_after_s`` (what a 429 or 503 asked for) stretches the wait before a retry, up
        to the round's remaining window (``stretched_delay``).
        """
        self.attempts.append(attempt)
        self.next_attempt_at = None
        slot = len(self.attempts) - self.round_start + self.slots_skipped
        delay = retry_delay(schedule, slot)
        if outcome is AttemptOutcome.RETRY and delay is not None:
            if retry_after_s is not None and retry_after_s > delay:
                delay, skipped = stretched_delay(schedule, slot, retry_after_s)
                self.slots_skipped += skipped
            self.state, self.next_attempt_at = DeliveryState.RETRYING, now + delay
        elif outcome is AttemptOutcome.GONE:
            self.state, self.disabled_reason = DeliveryState.DISABLED, GONE_REASON
        elif outcome is AttemptOutcome.DELIVERED:
            self.state = DeliveryState.DELIVERED
        else:
            self.state = DeliveryState.FAILED
        return self.next_attempt_at

    def redeliver(self) -> None:
        """Start a fresh round of the schedule, keeping the earlier attempts on record; a
        disabled callback is enabled again (the client asked for it)."""
        self.state, self.next_attempt_at = DeliveryState.PENDING, None
        self.round_start, self.slots_skipped = len(self.attempts), 0
        self.disabled_reason = None

    def public(self) -> dict[str, Any]:
        """What ``GET /jobs/<id>`` shows under ``webhook`` (no client, no bookkeeping)."""
        return {
            "url": self.url,
            "state": self.state.value,
            "attempts": self.attempts,
            "event_id": self.event_id,
            "webhook_id": self.webhook_id,
            "next_attempt_at": self.next_attempt_at,
            "disabled_reason": self.disabled_reason,
        }

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Delivery:
        """Read the stored form back."""
        stored = json.loads(text)
        return cls(
            url=stored["url"],
            client=stored.get("client", ""),
            event_id=stored["event_id"],
            state=DeliveryState(stored["state"]),
            attempts=list(stored.get("attempts", [])),
            next_attempt_at=stored.get("next_attempt_at"),
            round_start=int(stored.get("round_start", 0)),
            webhook_id=stored.get("webhook_id", ""),
            slots_skipped=int(stored.get("slots_skipped", 0)),
            disabled_reason=stored.get("disabled_reason"),
        )
