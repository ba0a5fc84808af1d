"""A webhook receiver cannot hold or exhaust a delivery: real sockets, hostile receivers.

One receiver answers ``200`` and then streams a gigabyte; another trickles its status line a
byte at a time, each byte well within the read timeout. Both attempts end within the attempt
deadline, without reading what they send, so a webhooks worker (whose housekeeping also runs
the reaper) neither runs out of memory nor loses a delivery thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.client import HTTPException

import pytest
from pytest_httpserver import HTTPServer

from imgq.settings import Settings
from imgq.webhooks.callback_urls import CallbackTarget
from tests.support.http import http
from tests.test_webhooks import _submit, _webhook_settled
from workers.webhook_delivery import _post

GIGABYTE = 1 << 30


def _serve(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(10)
            with connection, contextlib.suppress(OSError):  # the client hangs up, as it should
                connection.recv(65536)  # the request
                handle(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


@pytest.fixture
def streaming_receiver() -> Iterator[int]:
    def handle(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GIGABYTE)
        chunk = b"x" * (1 << 20)
        for _ in range(1024):
            connection.sendall(chunk)

    yield from _serve(handle)


@pytest.fixture
def trickling_receiver() -> Iterator[int]:
    def handle(connection: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n\r\n":
            connection.sendall(bytes([byte]))
            time.sleep(0.5)  # each byte within the read timeout, the whole far beyond it

    yield from _serve(handle)


def _target(port: int) -> CallbackTarget:
    return CallbackTarget("http", "127.0.0.1", port, "/hook", "127.0.0.1")


SETTINGS = Settings(
    webhook_connect_timeout_s=1.0, webhook_read_timeout_s=2.0, webhook_attempt_deadline_s=1.5
)


def test_a_receiver_streaming_a_gigabyte_is_not_read(streaming_receiver: int) -> None:
    patient = SETTINGS.model_copy(update={"webhook_attempt_deadline_s": 30.0})  # a busy machine
    answer = _post(patient, _target(streaming_receiver), b"{}", {})
    assert answer.status == 200  # status and headers are all a delivery reads, never the body


def test_a_trickling_receiver_is_cut_off_at_the_attempt_deadline(trickling_receiver: int) -> None:
    started = time.monotonic()
    with pytest.raises((OSError, HTTPException)):  # a retry, for the delivery
        _post(SETTINGS, _target(trickling_receiver), b"{}", {})
    # Bounded by the deadline, not by the 20 bytes x 0.5 s the receiver would take.
    assert time.monotonic() - started < SETTINGS.webhook_attempt_deadline_s + 3


@pytest.fixture
def stalling_receiver() -> Iterator[int]:
    """Trickles its answer slower than the attempt deadline allows."""

    def handle(connection: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n\r\n":
            connection.sendall(bytes([byte]))
            time.sleep(2.0)  # 40 s in all: past the attempt deadline (20 s by default)

    yield from _serve(handle)


@pytest.mark.e2e
@pytest.mark.usefixtures("predict_worker", "webhooks_worker")
def test_hostile_receivers_do_not_delay_other_deliveries(
    api_server: str,
    streaming_receiver: int,
    stalling_receiver: int,
    httpserver: HTTPServer,
    cat_jpeg: bytes,
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    stalled = _submit(api_server, cat_jpeg, f"http://127.0.0.1:{stalling_receiver}/hook")
    flooded = _submit(api_server, cat_jpeg, f"http://127.0.0.1:{streaming_receiver}/hook")
    time.sleep(1.0)  # both receivers hold their delivery now
    normal = _submit(api_server, cat_jpeg, httpserver.url_for("/hook"))
    assert _webhook_settled(api_server, normal)["state"] == "delivered"
    assert _webhook_settled(api_server, flooded)["state"] == "delivered"  # not read: no OOM
    stalled_webhook = http.get(f"{api_server}/jobs/{stalled}").json()["webhook"]
    assert stalled_webhook is None or stalled_webhook["state"] != "delivered"  # still held
