"""API keys: who a request comes from, what it may do, and the secret its webhooks are signed with.

Keys are configured in a JSON file (``IMGQ_API_KEYS_FILE``) or inline (``IMGQ_API_KEYS``), as a
list of ``{"client", "role", "key_sha256", "webhook_secret"}``. Only the SHA-256 of each key is
stored, so the file does not hand out working keys; a presented key is hashed and compared with
every stored hash in constant time. ``create_key_file`` makes the first admin key of a local run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

KEY_PREFIX = "imgq_"
"""Prefix of generated keys, so leaked keys are easy to recognise and scan for."""


class Role(StrEnum):
    """What a key may do: ``client`` works with its own jobs; ``admin`` also manages models."""

    CLIENT = "client"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    """One configured key (hashed) and its owner."""

    client: str
    role: Role
    key_sha256: str
    webhook_secret: str


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str) -> list[ApiKey]:
    """Parse the JSON list of keys; raises ValueError naming what is wrong."""
    entries = json.loads(text)
    if not isinstance(entries, list):
        raise ValueError("API keys must be a JSON list of objects")
    keys = []
    for entry in entries:
        try:
            keys.append(
                ApiKey(
                    str(entry["client"]),
                    Role(entry["role"]),
                    str(entry["key_sha256"]).lower(),
                    str(entry["webhook_secret"]),
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"bad API key entry {entry!r}: {exc}") from exc
    return keys


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

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key's owner, or None; every stored hash is compared, in constant time."""
        digest = hash_key(presented)
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.key_sha256):
                found = key
        return found

    def webhook_secret(self, client: str) -> str | None:
        """The secret that signs ``client``'s webhooks."""
        return next((key.webhook_secret for key in self._keys if key.client == client), None)


def new_key(client: str, role: Role) -> tuple[str, ApiKey]:
    """A fresh key and its stored form (with a fresh webhook secret)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, ApiKey(client, role, hash_key(key), "whsec_" + secrets.token_urlsafe(32))


def create_key_file(path: Path, client: str = "local-admin") -> str | None:
    """Create ``path`` with one admin key unless it exists; returns the new key, or None.

    The plain key is written beside it (``<name>.admin-key``, mode 600) for the local run to
    print; only the hash goes into the keys file.
    """
    if path.exists():
        return None
    key, stored = new_key(client, Role.ADMIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(stored)], indent=2))
    plain = path.with_suffix(".admin-key")
    plain.write_text(key + "\n")
    os.chmod(plain, 0o600)
    os.chmod(path, 0o600)
    return key
