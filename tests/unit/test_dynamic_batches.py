"""``DynamicBatches``: batches form only when the model is free, and acks follow the outcome.

The task is driven directly, without a worker: requests are small fakes with what
``SimpleRequest.from_request`` reads, and the pool either finishes each batch at once (calling
the callback synchronously, with the outcome the batch function would return) or holds it
until the test finishes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
from celery_batches import SimpleRequest
from celery_batches.trace import apply_batches_task

from imgq.queueing import PREDICT_IMAGE_TASK
from workers.batching import DynamicBatches


class FakeRequest:
    """A worker request as far as ``DynamicBatches`` and ``SimpleRequest`` look at it."""

    def __init__(self, index: int) -> None:
        self.id = str(uuid.uuid4())
        self.name = PREDICT_IMAGE_TASK
        self._payload: tuple[list[Any], dict[str, Any], dict[str, Any]] = (["job", index], {}, {})
        self.delivery_info = {"routing_key": "predict"}
        self.hostname = "predict@test"
        self.ignore_result = True
        self.reply_to = None
        self.correlation_id = self.id
        self.request_dict = {"id": self.id}
        self.settled: list[str] = []
        """What happened to the message: ``acked`` or ``requeued`` (or ``rejected``)."""

    def acknowledge(self) -> None:
        """Ack the message."""
        self.settled.append("acked")

    def reject(self, requeue: bool = False) -> None:
        """Give the message back to the queue, or drop it."""
        self.settled.append("requeued" if requeue else "rejected")


class FakePool:
    """Runs nothing; reports each batch's outcome at once, or when the test says so."""

    def __init__(self, outcome: Any = True, *, hold: bool = False) -> None:
        self.outcome = outcome
        self.hold = hold
        self.batches: list[list[SimpleRequest]] = []
        self.held: list[Callable[[Any], None]] = []

    def apply_async(
        self, target: Callable[..., Any], args: tuple[Any, ...], callback: Callable[[Any], None]
    ) -> None:
        """Take a batch the way celery's pools do: the function, its arguments, a callback."""
        assert target is apply_batches_task
        (simple_requests,) = args[1]
        self.batches.append(simple_requests)
        if self.hold:
            self.held.append(callback)
        else:
            callback(self.outcome)

    def finish_oldest(self, outcome: Any = True) -> None:
        """Report the outcome of the oldest held batch."""
        self.held.pop(0)(outcome)


class FakeTimer:
    """The flush timer's handle."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the repeating flush."""
        self.cancelled = True


def _batches(pool: FakePool, flush_every: int = 3) -> DynamicBatches:
    task = DynamicBatches()
    task.flush_every = flush_every
    task._pool = pool
    return task


def _buffer(task: DynamicBatches, count: int) -> list[FakeRequest]:
    requests = [FakeRequest(index) for index in range(count)]
    for request in requests:
        task._buffer.put(request)
    return requests


def _start_timer(task: DynamicBatches) -> FakeTimer:
    """What the first buffered message does: start the repeating flush timer."""
    timer = FakeTimer()
    task._tref = cast(Any, timer)  # typed as the real kombu timer
    return timer


def _ids(requests: list[Any]) -> list[str]:
    return [request.id for request in requests]


def test_a_batch_takes_at_most_flush_every_requests_in_arrival_order() -> None:
    task = _batches(FakePool(hold=True), flush_every=3)
    requests = _buffer(task, 5)

    assert task._take_batch() == requests[:3]
    assert task._buffer.qsize() == 2


def test_no_batch_is_taken_while_one_is_in_flight() -> None:
    pool = FakePool(hold=True)
    task = _batches(pool)
    _buffer(task, 5)
    task._do_flush()

    assert task._take_batch() == []
    assert task._buffer.qsize() == 2
    assert len(pool.batches) == 1


def test_an_empty_buffer_gives_no_batch_and_leaves_the_model_free() -> None:
    task = _batches(FakePool(hold=True))

    assert task._take_batch() == []
    request = _buffer(task, 1)
    assert task._take_batch() == request


def test_the_pool_gets_simple_requests_with_each_message_id_and_arguments() -> None:
    pool = FakePool()
    task = _batches(pool)
    requests = _buffer(task, 2)

    task._do_flush()

    (batch,) = pool.batches
    assert all(isinstance(simple, SimpleRequest) for simple in batch)
    assert _ids(batch) == _ids(requests)
    assert [simple.args for simple in batch] == [["job", 0], ["job", 1]]


def test_every_request_of_a_batch_that_returned_true_is_acked() -> None:
    task = _batches(FakePool(outcome=True))
    requests = _buffer(task, 3)

    task._do_flush()

    assert [request.settled for request in requests] == [["acked"]] * 3


@pytest.mark.parametrize("outcome", [False, None, "stored"])
def test_every_request_of_a_batch_that_did_not_return_true_is_requeued(outcome: Any) -> None:
    task = _batches(FakePool(outcome=outcome))
    requests = _buffer(task, 3)

    task._do_flush()

    assert [request.settled for request in requests] == [["requeued"]] * 3


def test_a_finished_batch_starts_the_next_from_what_buffered_meanwhile() -> None:
    pool = FakePool(hold=True)
    task = _batches(pool, flush_every=2)
    first = _buffer(task, 1)
    task._do_flush()
    waiting = _buffer(task, 3)  # arrive while the first batch runs

    pool.finish_oldest(True)

    assert first[0].settled == ["acked"]
    assert [_ids(batch) for batch in pool.batches] == [_ids(first), _ids(waiting[:2])]
    pool.finish_oldest(False)
    assert [request.settled for request in waiting[:2]] == [["requeued"]] * 2
    assert _ids(pool.batches[2]) == _ids(waiting[2:])
    pool.finish_oldest(True)
    assert task._take_batch() == []  # nothing left, and the model is free again
    assert task._buffer.empty()


def test_a_synchronous_pool_drains_the_whole_buffer_in_flush_every_sized_batches() -> None:
    pool = FakePool(outcome=True)
    task = _batches(pool, flush_every=3)
    requests = _buffer(task, 7)

    task._do_flush()

    assert [len(batch) for batch in pool.batches] == [3, 3, 1]
    assert all(request.settled == ["acked"] for request in requests)
    later = _buffer(task, 1)
    assert task._take_batch() == later  # the in-flight count is back to zero


def test_an_idle_tick_cancels_the_flush_timer() -> None:
    task = _batches(FakePool())
    timer = _start_timer(task)

    task._do_flush()

    assert timer.cancelled
    assert task._tref is None


def test_a_tick_during_a_running_batch_stops_the_flush_timer_and_the_batch_end_takes_over() -> None:
    pool = FakePool(hold=True)
    task = _batches(pool)
    _buffer(task, 1)
    task._do_flush()
    timer = _start_timer(task)
    waiting = _buffer(task, 2)

    task._do_flush()

    assert timer.cancelled
    assert task._tref is None
    pool.finish_oldest(True)
    assert _ids(pool.batches[1]) == _ids(waiting)  # taken when the first batch ended, no tick
