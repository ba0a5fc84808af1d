"""A small HTTP client of the imgq API, used by the ``imgq`` command line.

It speaks only the public HTTP contract, so it works against any deployment; errors come back
as ``ApiError`` carrying the server's own error code and message.
"""

from __future__ import annotations

import io
import mimetypes
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor

from imgq.media_types import IMAGE_MEDIA_TYPES

TERMINAL = ("succeeded", "failed", "canceled")
"""Job states after which nothing changes."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
"""Files ``zip_dataset`` packs (what the server reads as images)."""


MAX_WAIT_S = 60.0
"""Longest the client waits before sending a refused request again."""


def _retry_after_s(response: requests.Response) -> float | None:
    """How long the server asked to wait (``429``/``503`` with ``Retry-After`` in seconds)."""
    if response.status_code not in (429, 503):
        return None
    try:
        return min(MAX_WAIT_S, max(0.0, float(response.headers.get("Retry-After", "1"))))
    except ValueError:  # an HTTP date: wait the usual second
        return 1.0


class ApiError(Exception):
    """The server answered with an error (or could not be reached)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status, self.code, self.message = status, code, message


RAW_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
)
"""Image types ``POST /jobs/predict`` takes as the whole body."""


class ImgqClient:
    """Calls the imgq API with one base URL and one API key."""

    def __init__(self, url: str, key: str, timeout_s: float = 30.0, max_retries: int = 5) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.timeout_s = timeout_s
        self.max_retries = max_retries

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send, waiting and sending again while the server answers ``429`` or ``503`` with
        ``Retry-After`` (at most ``max_retries`` times, each wait at most ``MAX_WAIT_S``).

        A streamed body (an upload being read as it is sent) cannot be sent twice, so such a
        request gets the server's answer as it is.
        """
        replayable = not hasattr(kwargs.get("data"), "read")
        for attempt in range(self.max_retries + 1):
            try:
                response = self.session.request(method, f"{self.url}{path}", **kwargs)
            except requests.RequestException as exc:
                raise ApiError(0, "unreachable", f"Cannot reach {self.url}: {exc}") from exc
            wait = _retry_after_s(response)
            if wait is None or not replayable or attempt == self.max_retries:
                return response
            time.sleep(wait)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout_s)
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise ApiError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "http_error", response.text[:200]) from None
        return response.json() if response.content else None

    def predict(self, images: list[Path], wait_s: float = 0, **options: Any) -> dict[str, Any]:
        """Submit one predict job for ``images``; with ``wait_s``, the server holds the answer
        until the job ends (``Prefer: wait``), so a short job comes back finished in the same
        round trip.

        One image whose type is known goes as the body itself (``Content-Type: image/jpeg``,
        the options in the query string), the cheapest form for the API; several go as a
        multipart form.
        """
        headers = {"Prefer": f"wait={wait_s:g}"} if wait_s > 0 else {}
        timeout = self.timeout_s + wait_s
        fields = {k: str(v) for k, v in options.items() if v is not None}
        media_type = mimetypes.guess_type(images[0].name)[0] if len(images) == 1 else None
        if media_type in IMAGE_MEDIA_TYPES:
            headers["Content-Type"] = str(media_type)
            body = images[0].read_bytes()
            return dict(
                self._call(
                    "POST",
                    "/jobs/predict",
                    params=fields,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                )
            )
        parts = [("image", (path.name, path.read_bytes())) for path in images]
        return dict(
            self._call(
                "POST", "/jobs/predict", files=parts, data=fields, headers=headers, timeout=timeout
            )
        )

    def finetune(
        self,
        archive: bytes | None,
        fields: dict[str, Any],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Queue a fine-tune job on an uploaded zipped dataset, reporting upload progress, or
        (``archive`` None) on the stored dataset ``fields`` name by ``dataset_name`` or
        ``dataset_version``: the form is then multipart still, with no ``dataset`` part."""
        form: dict[str, Any] = {k: str(v) for k, v in fields.items() if v is not None}
        if archive is not None:
            form["dataset"] = ("dataset.zip", archive, "application/zip")
        encoder = MultipartEncoder(form)
        monitor = MultipartEncoderMonitor(
            encoder, lambda m: progress(m.bytes_read, encoder.len) if progress else None
        )
        return dict(
            self._call(
                "POST",
                "/jobs/finetune",
                data=monitor,
                headers={"Content-Type": monitor.content_type},
                timeout=None,
            )
        )

    def job(self, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        """A job's document, held up to ``wait_s`` until it ends."""
        return dict(
            self._call(
                "GET", f"/jobs/{job_id}", params={"wait": wait_s}, timeout=self.timeout_s + wait_s
            )
        )

    def follow(self, job_id: str, poll_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """The job's document every ``poll_s`` (long-polled) until it ends, the last included."""
        while True:
            document = self.job(job_id, wait_s=poll_s)
            yield document
            if document["status"] in TERMINAL:
                return

    def jobs(self, **filters: Any) -> dict[str, Any]:
        """A page of the caller's jobs."""
        params = {k: v for k, v in filters.items() if v is not None}
        return dict(self._call("GET", "/jobs", params=params))

    def models(self) -> list[dict[str, Any]]:
        """Every model and its versions."""
        return list(self._call("GET", "/models"))

    def datasets(self) -> list[dict[str, Any]]:
        """The caller's stored datasets, each with its latest version's size."""
        return list(self._call("GET", "/datasets"))

    def dataset(self, name: str) -> dict[str, Any]:
        """One stored dataset with every version's sizes per class and split."""
        return dict(self._call("GET", f"/datasets/{name}"))

    def model(self, name: str) -> dict[str, Any]:
        """One model: its versions and which one is active (``active_version``)."""
        return dict(self._call("GET", f"/models/{name}"))

    def monitoring(self, name: str, version: int, window: int) -> dict[str, Any]:
        """Drift and online accuracy of a version's newest ``window`` predictions."""
        return dict(
            self._call(
                "GET", f"/models/{name}/versions/{version}/monitoring", params={"window": window}
            )
        )

    def request_export(self, name: str, version: int, fmt: str) -> dict[str, Any]:
        """Queue an export job."""
        return dict(
            self._call("POST", f"/models/{name}/versions/{version}/exports", json={"format": fmt})
        )

    def download_export(self, name: str, version: int, fmt: str) -> bytes:
        """The file of a finished export."""
        response = self.session.get(
            f"{self.url}/models/{name}/versions/{version}/exports/{fmt}", timeout=self.timeout_s
        )
        if response.status_code >= 400:
            self._call("GET", f"/models/{name}/versions/{version}/exports/{fmt}")  # raises
        return response.content

    def activate(self, name: str, version: int) -> dict[str, Any]:
        """Make ``version`` the active one (admin keys only)."""
        return dict(self._call("POST", f"/models/{name}/versions/{version}/activate"))

    def retrain(self, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """Queue a retrain of the model on its grown dataset, with these training overrides
        (``epochs``, ``fine_tune_epochs``, ``force``...); it is never activated on its own."""
        return dict(self._call("POST", f"/models/{name}/retrain", json=overrides))

    def start_canary(self, name: str, version: int, traffic: float) -> dict[str, Any]:
        """Send ``traffic`` of the model's unpinned jobs to ``version``; the model's document."""
        return dict(
            self._call(
                "POST", f"/models/{name}/versions/{version}/canary", json={"traffic": traffic}
            )
        )

    def stop_canary(self, name: str, version: int) -> None:
        """End the model's canary of ``version``."""
        self._call("DELETE", f"/models/{name}/versions/{version}/canary")

    def policy(self, name: str) -> dict[str, Any]:
        """The model's rollout policy (an ``ApiError`` of HTTP 404 when it has none)."""
        return dict(self._call("GET", f"/models/{name}/policy"))

    def set_policy(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Replace the model's rollout policy; the policy as stored (with its defaults)."""
        return dict(self._call("PUT", f"/models/{name}/policy", json=policy))

    def delete_policy(self, name: str) -> None:
        """Turn the model's rollout policy off."""
        self._call("DELETE", f"/models/{name}/policy")

    def events(self, name: str, limit: int, cursor: str | None = None) -> dict[str, Any]:
        """A page of the model's event log, newest first (``events`` and ``next_cursor``)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return dict(self._call("GET", f"/models/{name}/events", params=params))


def zip_dataset(folder: Path) -> bytes:
    """Zip a folder of class sub-folders (or ``train/``, ``validation/``, ``test/``) of images."""
    if not folder.is_dir():
        raise ApiError(0, "invalid_dataset", f"{folder} is not a folder.")
    buffer = io.BytesIO()
    count = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # images are compressed
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                archive.write(path, path.relative_to(folder).as_posix())
                count += 1
    if not count:
        raise ApiError(0, "invalid_dataset", f"No images under {folder}.")
    return buffer.getvalue()
