"""One job's webhook delivery and its state machine; the retry schedule lives here.

::

    pending --attempt--> delivered                (2xx)
       |                 failed                   (any other status, a bad URL, or the
       |                                           schedule ran out)
       +-----------> retrying --attempt--> ...    (timeout, connection error, 429, 5xx)

    delivered / failed --redeliver--> pending     (a fresh round of the same schedule)

Attempt ``n`` of a round waits ``IMGQ_WEBHOOK_RETRY_SCHEDULE_S[n]`` seconds, jittered by
``JITTER`` either way so that a receiver coming back is not stampeded; when the schedule has
no entry left, a retryable outcome fails the delivery. Every attempt is kept (time, status code
or error, duration) and shown under ``webhook`` in ``GET /jobs/<id>``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

JITTER = 0.2
"""Retry delays vary by up to this fraction either way, so failed receivers are not stampeded."""


class DeliveryState(StrEnum):
    """Where a delivery stands; ``delivered`` and ``failed`` end it until a redelivery."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


class AttemptOutcome(StrEnum):
    """What one attempt came to."""

    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"

    @classmethod
    def of_status(cls, status: int) -> AttemptOutcome:
        """2xx delivers; 429 and 5xx are worth retrying; anything else will not get better."""
        if 200 <= status < 300:
            return cls.DELIVERED
        return cls.RETRY if status == 429 or status >= 500 else cls.FAILED


def retry_delay(schedule: list[float], attempt: int) -> float | None:
    """Seconds before attempt number ``attempt`` (0-based), jittered; None when none is left."""
    if attempt >= len(schedule):
        return None
    return schedule[attempt] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311


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

    @classmethod
    def for_job(cls, job_id: str, fields: dict[str, str]) -> Delivery:
        """The first delivery of an ended job, from its record."""
        return cls(
            url=fields["callback_url"],
            client=fields.get("client", ""),
            event_id=f"{job_id}.{fields['status']}",
        )

    @property
    def ended(self) -> bool:
        """Whether no attempt is due (until someone asks for a redelivery)."""
        return self.state in (DeliveryState.DELIVERED, DeliveryState.FAILED)

    def record(
        self, outcome: AttemptOutcome, attempt: dict[str, Any], schedule: list[float], now: float
    ) -> float | None:
        """Apply one attempt's outcome; returns when the next attempt is due, or None."""
        self.attempts.append(attempt)
        delay = retry_delay(schedule, len(self.attempts) - self.round_start)
        if outcome is AttemptOutcome.RETRY and delay is not None:
            self.state, self.next_attempt_at = DeliveryState.RETRYING, now + delay
        else:
            delivered = outcome is AttemptOutcome.DELIVERED
            self.state = DeliveryState.DELIVERED if delivered else DeliveryState.FAILED
            self.next_attempt_at = None
        return self.next_attempt_at

    def redeliver(self) -> None:
        """Start a fresh round of the schedule, keeping the earlier attempts on record."""
        self.state, self.next_attempt_at = DeliveryState.PENDING, None
        self.round_start = len(self.attempts)

    def public(self) -> dict[str, Any]:
        """What ``GET /jobs/<id>`` shows under ``webhook`` (no client, no bookkeeping)."""
        return {
            "url": self.url,
            "state": self.state.value,
            "attempts": self.attempts,
            "event_id": self.event_id,
            "next_attempt_at": self.next_attempt_at,
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
        )
