"""The states a job can be in, what it does, and what a cancel request can come to.

One place lists them (as rq's ``JobStatus`` does): records, schemas, the Lua transitions
(``imgq.jobs.scripts`` generates its terminal-state test from ``TERMINAL``) and tests use these.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Every state a job can be in; ``succeeded``, ``failed`` and ``canceled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """Whether no further transition can happen."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
"""States after which nothing about a job changes."""


class JobType(StrEnum):
    """What a job does."""

    PREDICT = "predict"
    FINETUNE = "finetune"
    EXPORT = "export"
    INGEST = "ingest"


class CancelOutcome(StrEnum):
    """What ``DELETE /jobs/<id>`` came to (the cancel script returns one of these)."""

    CANCELED = "canceled"
    """The job was queued and is now canceled."""
    CANCEL_REQUESTED = "cancel_requested"
    """A running fine-tune was asked to stop; it ends ``canceled`` between batches."""
    ENDED = "ended"
    """The job had already ended."""
    NOT_CANCELABLE = "not_cancelable"
    """A running predict job: it ends in moments and cannot be stopped."""
    MISSING = "missing"
    """No such job (it expired)."""
