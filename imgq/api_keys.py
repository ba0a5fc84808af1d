"""API keys: who a request comes from, what it may do, and the secrets its webhooks are signed with.

Keys are configured in a JSON file (``IMGQ_API_KEYS_FILE``) or inline (``IMGQ_API_KEYS``), as a
list of ``{"client", "role", "key_sha256", "webhook_secret", "previous_webhook_secret",
"previous_until"}``. Only the SHA-256 of each key is stored, so the file does not hand out
working keys; a presented key is hashed and compared with every stored hash in constant time.

Every field but ``client`` may be absent, so one file can be split by who needs what: the API's
copy has no webhook secrets, and the webhooks worker's copy has no key hashes (an entry without
``key_sha256`` authenticates nothing). During a webhook secret rotation the old secret stays
valid as ``previous_webhook_secret`` until ``previous_until`` (Unix seconds), and deliveries are
signed with both.

The API reads the file through a ``ReloadingKeyRing``, which re-reads it when it changes, so a
revoked key is refused within seconds without a restart; ``imgq-admin`` (``imgq.admin``) edits
it, always by writing a new file beside it and renaming it over, so a reader never sees half of
one. ``create_key_file`` makes the first admin key of a local run.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KEY_PREFIX = "imgq_"
"""Prefix of generated keys, so leaked keys are easy to recognise and scan for."""
WHSEC_PREFIX = "whsec_"
"""Prefix of webhook secrets: the Standard Webhooks form (``imgq.webhooks.standard``)."""
WEBHOOK_SECRET_FIELDS = ("webhook_secret", "previous_webhook_secret", "previous_until")
"""The fields of an entry only the webhooks worker needs."""
RELOAD_CHECK_INTERVAL_S = 1.0
"""How often the API looks (one ``stat``) whether the keys file changed."""


class Role(StrEnum):
    """What a key may do: ``client`` works with its own jobs; ``admin`` also manages models."""

    CLIENT = "client"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    """One configured entry: a key (hashed) and its owner, and the owner's webhook secrets.

    An empty ``key_sha256`` authenticates nothing (a webhooks-only entry); an empty
    ``webhook_secret`` means the client gets no webhook deliveries.
    """

    client: str
    role: Role = Role.CLIENT
    key_sha256: str = ""
    webhook_secret: str = ""
    previous_webhook_secret: str = ""
    previous_until: float = 0.0
    """Unix seconds until which ``previous_webhook_secret`` still signs deliveries."""
    quotas: Mapping[str, float] = field(default_factory=dict)
    """This key's own limits (``imgq.quotas.Quota`` field names: ``jobs``, ``queued_images``,
    ..., ``rate_per_s``, ``burst``) over the settings' defaults."""

    def webhook_secrets(self, now: float) -> list[str]:
        """The secrets a delivery made at ``now`` is signed with: the current one first."""
        if not self.webhook_secret:
            return []
        if self.previous_webhook_secret and now < self.previous_until:
            return [self.webhook_secret, self.previous_webhook_secret]
        return [self.webhook_secret]

    def to_entry(self) -> dict[str, Any]:
        """The JSON object of this key in the keys file (absent fields left out)."""
        entry: dict[str, Any] = {"client": self.client, "role": str(self.role)}
        if self.key_sha256:
            entry["key_sha256"] = self.key_sha256
        if self.webhook_secret:
            entry["webhook_secret"] = self.webhook_secret
        if self.previous_webhook_secret and self.previous_until:
            entry["previous_webhook_secret"] = self.previous_webhook_secret
            entry["previous_until"] = self.previous_until
        if self.quotas:
            entry["quotas"] = dict(self.quotas)
        return entry


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def _text(entry: Mapping[str, Any], name: str) -> str:
    value = entry.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


QUOTA_NAMES = frozenset(
    {
        "jobs",
        "queued_images",
        "queued_image_bytes",
        "long_jobs",
        "explain_jobs",
        "upload_bytes",
        "rate_per_s",
        "burst",
    }
)
"""Limits a key may set for itself (``quotas`` in its entry)."""


def _quotas(raw: Any) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - QUOTA_NAMES:
        raise TypeError(f"quotas must be an object with some of {sorted(QUOTA_NAMES)}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in raw.values()):
        raise TypeError("quotas must be positive numbers")
    return {name: float(value) for name, value in raw.items()}


def parse_entry(entry: Any) -> ApiKey:
    """One entry of the keys file; raises ValueError naming what is wrong."""
    try:
        if not isinstance(entry, dict):
            raise TypeError("an entry must be a JSON object")
        client = _text(entry, "client")
        if not client:
            raise KeyError("client")
        key_sha256 = _text(entry, "key_sha256").lower()
        if key_sha256 and entry.get("role") is None:
            raise KeyError("role")  # a key needs a role: none is granted by default
        role = Role(entry.get("role") or Role.CLIENT)
        until = entry.get("previous_until")
        if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
            raise TypeError("previous_until must be Unix seconds")
        return ApiKey(
            client,
            role,
            key_sha256,
            _text(entry, "webhook_secret"),
            _text(entry, "previous_webhook_secret"),
            float(until or 0.0),
            _quotas(entry.get("quotas")),
        )
    except (KeyError, ValueError, TypeError) as exc:
        shown = (
            {k: v for k, v in entry.items() if "secret" not in k}
            if isinstance(entry, dict)
            else entry
        )
        raise ValueError(f"bad API key entry {shown!r}: {type(exc).__name__}: {exc}") from exc


def parse_entries(text: str) -> list[dict[str, Any]]:
    """The raw JSON objects of a keys file, each checked to be a valid entry."""
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError("API keys must be a JSON list of objects")
    for entry in entries:
        parse_entry(entry)
    return entries


def parse_keys(text: str) -> list[ApiKey]:
    """Parse the JSON list of keys; raises ValueError naming what is wrong."""
    return [parse_entry(entry) for entry in parse_entries(text)]


class KeyRing:
    """The configured keys, looked up by presented key or by client name."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, inline: str | None, file: Path | None) -> KeyRing:
        """Keys from the inline JSON and the file together."""
        keys: list[ApiKey] = []
        if inline:
            keys.extend(parse_keys(inline))
        if file is not None and file.is_file():
            keys.extend(parse_keys(file.read_text()))
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> list[ApiKey]:
        """Every entry, in the order configured."""
        return list(self._keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key's owner, or None; every stored hash is compared, in constant time."""
        digest = hash_key(presented)
        found = None
        for key in self._keys:
            if key.key_sha256 and hmac.compare_digest(digest, key.key_sha256):
                found = key
        return found

    def _secret_entry(self, client: str) -> ApiKey | None:
        return next((k for k in self._keys if k.client == client and k.webhook_secret), None)

    def webhook_secret(self, client: str) -> str | None:
        """The secret that signs ``client``'s webhooks (the current one during a rotation)."""
        entry = self._secret_entry(client)
        return entry.webhook_secret if entry else None

    def webhook_secrets(self, client: str, now: float | None = None) -> list[str]:
        """Every secret ``client``'s deliveries are signed with now: the current one, then the
        previous one while its grace period lasts; empty when the client has none."""
        entry = self._secret_entry(client)
        return entry.webhook_secrets(time.time() if now is None else now) if entry else []


def _file_stamp(file: Path | None) -> tuple[int, int, int, int] | None:
    """What changes whenever the file is rewritten or replaced (a rename changes the inode)."""
    if file is None:
        return None
    try:
        stat = file.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ReloadingKeyRing:
    """A ``KeyRing`` that follows the keys file: ``current()`` re-reads it once it changed.

    At most once per ``check_interval_s`` a call looks at the file's inode, size and mtime (one
    ``stat``, no read); only a change re-reads it. A file that no longer parses keeps the keys
    read before (logged as an error), so a bad edit cannot lock everyone out or let anyone in;
    a missing file has no keys. Safe to share between threads.
    """

    def __init__(
        self,
        inline: str | None,
        file: Path | None,
        check_interval_s: float = RELOAD_CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inline = parse_keys(inline) if inline else []
        self._file = file
        self._interval = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = _file_stamp(file)
        self._ring = KeyRing([*self._inline, *self._read()])  # a bad file fails the start
        self._checked = clock()

    def _read(self) -> list[ApiKey]:
        if self._file is None or not self._file.is_file():
            return []
        return parse_keys(self._file.read_text())

    def current(self) -> KeyRing:
        """The keys as of the file's latest version (at most ``check_interval_s`` old)."""
        if self._clock() - self._checked < self._interval:
            return self._ring
        with self._lock:
            now = self._clock()
            if now - self._checked < self._interval:
                return self._ring  # another thread just looked
            self._checked = now
            stamp = _file_stamp(self._file)
            if stamp == self._stamp:
                return self._ring
            self._stamp = stamp
            try:
                keys = self._read()
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                logger.error(
                    "keys file %s changed but cannot be read; keeping the keys read before: %s",
                    self._file,
                    exc,
                )
                return self._ring
            self._ring = KeyRing([*self._inline, *keys])
            logger.info("keys file %s reloaded: %d entries", self._file, len(keys))
            return self._ring


def new_webhook_secret() -> str:
    """``whsec_`` and the padded standard base64 of 32 random bytes."""
    return WHSEC_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_key(client: str, role: Role, webhook_secret: str | None = None) -> tuple[str, ApiKey]:
    """A fresh key and its stored form (with a fresh webhook secret unless one is given)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    secret = new_webhook_secret() if webhook_secret is None else webhook_secret
    return key, ApiKey(client, role, hash_key(key), secret)


def read_key_entries(path: Path) -> list[dict[str, Any]]:
    """The raw entries of a keys file (none if it does not exist), unknown fields kept."""
    if not path.exists():
        return []
    return parse_entries(path.read_text())


def write_key_entries(path: Path, entries: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` atomically (mode 600): written beside it, then renamed over it, so a
    reader sees the old file or the new one, never half of one."""
    text = json.dumps(list(entries), indent=2) + "\n"
    parse_entries(text)  # never write a file the services would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(aside, 0o600)
        os.replace(aside, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@contextlib.contextmanager
def locked_key_file(path: Path) -> Iterator[None]:
    """Hold ``<path>.lock`` so two edits of the keys file do not lose one another's change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_key_file(path: Path, client: str = "local-admin") -> str | None:
    """Create ``path`` with one admin key unless it exists; returns the new key, or None.

    The plain key is written beside it (``<name>.admin-key``, mode 600) for the local run to
    print; only the hash goes into the keys file.
    """
    if path.exists():
        return None
    key, stored = new_key(client, Role.ADMIN)
    write_key_entries(path, [stored.to_entry()])
    plain = path.with_suffix(".admin-key")
    plain.write_text(key + "\n")
    os.chmod(plain, 0o600)
    return key
