"""Requests to the session's API as one of its clients, and waiting for a job to end.

The ``settings`` fixture makes the session's API keys (an admin, ``alice`` and ``bob``) and
writes the keys file the API reads; ``credentials`` keeps the plain keys and webhook secrets
for the tests. ``http`` sends as the admin and ``http.as_client("alice")`` as another client;
each looks its key up when it sends, so a helper made at import time works once the fixture ran.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from imgq.api_keys import Role, new_key
from imgq.local.supervisor import wait_until

CLIENTS = {"admin": Role.ADMIN, "alice": Role.CLIENT, "bob": Role.CLIENT}
"""The session's clients and their roles."""


@dataclass
class Credentials:
    """Plain API keys and webhook secrets of the session's clients, by client name."""

    keys: dict[str, str] = field(default_factory=dict)
    webhook_secrets: dict[str, str] = field(default_factory=dict)

    def write_keys_file(self, path: Path) -> None:
        """Make a key for each of ``CLIENTS``, keep it, and write the API's keys file.

        Args:
            path: where the keys file goes (only the keys' hashes are written).
        """
        stored = []
        for client, role in CLIENTS.items():
            self.keys[client], entry = new_key(client, role)
            self.webhook_secrets[client] = entry.webhook_secret
            stored.append(asdict(entry))
        path.write_text(json.dumps(stored))


credentials = Credentials()
"""The session's credentials; the ``settings`` fixture fills them in."""


class Http:
    """``requests`` calls with a client's API key, thread-safe (no shared session).

    ``http.get(url)`` uses the admin key of the test session; ``http.as_client("alice")``
    returns the same helper for another configured client.
    """

    def __init__(self, client: str = "admin", credentials: Credentials = credentials) -> None:
        self.client = client
        self.credentials = credentials

    @property
    def key(self) -> str:
        """The client's plain API key."""
        return self.credentials.keys[self.client]

    def as_client(self, client: str) -> Http:
        """The helper for one of the session's clients."""
        return Http(client, self.credentials)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send with ``Authorization: Bearer <key>`` and a default timeout."""
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, url, headers=headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """GET with the key."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        """POST with the key."""
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        """DELETE with the key."""
        return self.request("DELETE", url, **kwargs)


http = Http()
"""Requests as the session's admin."""


def wait_for_job(base: str, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """Long-poll ``GET /jobs/<id>?wait=`` until the job ends.

    Args:
        base: the API's base URL.
        job_id: the job to wait for (the admin may read every job).
        timeout_s: how long to wait before ``TimeoutError``.

    Returns:
        The job's document once its status is ``succeeded``, ``failed`` or ``canceled``.
    """
    document: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal document
        document = http.get(f"{base}/jobs/{job_id}", params={"wait": 5}, timeout=10).json()
        return document["status"] in ("succeeded", "failed", "canceled")

    wait_until(ended, timeout_s, f"job {job_id}")
    return document
