"""A webhook receiver for tests: answers a scripted sequence of statuses, keeps every request."""

from __future__ import annotations

import json
import threading
from typing import Any

from werkzeug import Request, Response


class Receiver:
    """A ``pytest_httpserver`` handler that answers ``statuses`` in turn (the last one from
    then on; ``200`` by default), the n-th answer with ``headers[n]`` if given, and keeps every
    request's headers and body."""

    def __init__(
        self, statuses: list[int] | None = None, headers: list[dict[str, str]] | None = None
    ) -> None:
        self.statuses = statuses or [200]
        self.headers = headers or []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        with self.lock:
            self.requests.append((dict(request.headers), request.get_data()))
            number = len(self.requests)
            status = self.statuses[min(number, len(self.statuses)) - 1]
            headers = self.headers[number - 1] if number <= len(self.headers) else {}
        return Response("ok", status=status, headers=headers)

    def documents(self) -> list[dict[str, Any]]:
        """The bodies received, in order."""
        with self.lock:
            return [json.loads(body) for _, body in self.requests]

    def types(self) -> list[str]:
        """The event types received, in order."""
        return [str(document["type"]) for document in self.documents()]
