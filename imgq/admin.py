"""``imgq-admin``: manage API keys and webhook secrets in the keys file.

    imgq-admin keys create --client NAME [--role client|admin]
    imgq-admin keys list
    imgq-admin keys revoke --client NAME | --key-sha256 PREFIX
    imgq-admin keys rotate-webhook-secret --client NAME [--grace-s 86400]

Every command works on ``--file`` (default: the settings' ``IMGQ_API_KEYS_FILE``), which the
API and the webhooks worker re-read when it changes: locally a change applies within seconds,
without a restart. Writes go to a file beside it that is then renamed over it, under a lock, so
a reader never sees half a file and two edits never lose one another. Entries' fields this
command does not know are kept as they are.

A plain key and a new webhook secret are printed once and never stored: only the key's SHA-256
goes into the file. With ``--kubernetes`` a command makes its change to the file (the
operator's master copy) and prints, instead of the table, two Secret manifests for
``kubectl apply -f -``: ``imgq-api-keys`` (the entries without webhook secrets, for the API) and
``imgq-webhook-secrets`` (each client's secrets only, for the webhooks worker); new secrets then
go to stderr. Exit status 1 on an error, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgq.api_keys import (
    WEBHOOK_SECRET_FIELDS,
    ApiKey,
    Role,
    locked_key_file,
    new_key,
    new_webhook_secret,
    parse_entry,
    read_key_entries,
    write_key_entries,
)
from imgq.webhooks.standard import is_standard_secret

CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Names ``keys create`` accepts for a new client."""
RESERVED_CLIENTS = frozenset({"system"})
"""Names no client may have (``system`` owns the built-in models)."""
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A Kubernetes namespace name (a DNS label)."""
MIN_HASH_PREFIX = 8
"""Shortest key hash prefix ``keys revoke --key-sha256`` accepts."""
SHOWN_HASH = 12
"""Characters of a key's hash ``keys list`` shows."""
DEFAULT_GRACE_S = 86400
"""How long a rotated-out webhook secret still signs deliveries, by default."""
API_MANIFEST = "imgq-api-keys"
"""Name of the Secret the API mounts: key hashes and roles, no webhook secrets."""
WEBHOOKS_MANIFEST = "imgq-webhook-secrets"
"""Name of the Secret the webhooks worker mounts: clients' webhook secrets, no key hashes."""
MOUNTED_FILE = "api-keys.json"
"""The file name both Secrets hold (mount them at a directory; never with ``subPath``, which
Kubernetes never refreshes)."""


class AdminError(Exception):
    """A command that cannot be carried out; the message says why."""


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keys_file(args: argparse.Namespace) -> Path:
    if args.file is not None:
        return Path(args.file)
    from imgq.settings import load_settings

    file = load_settings().api_keys_file
    if file is None:
        raise AdminError("No keys file: pass --file or set IMGQ_API_KEYS_FILE.")
    return file


def _entries_of(entries: list[dict[str, Any]], client: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry.get("client") == client]


def _rotation_state(key: ApiKey, now: float) -> str:
    if not key.previous_webhook_secret or not key.previous_until:
        return "-"
    if now < key.previous_until:
        return f"previous valid until {_utc(key.previous_until)}"
    return f"previous expired {_utc(key.previous_until)}"


def _secret_form(secret: str) -> str | None:
    """``standard`` for a secret that also signs the Standard Webhooks headers, ``legacy`` for
    one that signs ``Imgq-Signature`` only (rotating it issues a standard one)."""
    if not secret:
        return None
    return "standard" if is_standard_secret(secret) else "legacy"


def _listing(entries: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    rows = []
    for entry in entries:
        key = parse_entry(entry)
        rows.append(
            {
                "client": key.client,
                "role": str(key.role),
                "key_sha256_prefix": key.key_sha256[:SHOWN_HASH],
                "webhook_secret": bool(key.webhook_secret),
                "webhook_secret_form": _secret_form(key.webhook_secret),
                "rotation": _rotation_state(key, now),
                "previous_until": key.previous_until or None,
            }
        )
    return rows


def cmd_create(args: argparse.Namespace, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Add a key for ``--client`` (another key of an existing client shares its webhook
    secrets)."""
    client = args.client
    if not CLIENT_NAME.fullmatch(client) or client in RESERVED_CLIENTS:
        raise AdminError(
            "Client names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit, and not {', '.join(sorted(RESERVED_CLIENTS))}: {client!r}."
        )
    role = Role(args.role)
    existing = next(
        (e for e in _entries_of(entries, client) if parse_entry(e).webhook_secret), None
    )
    key, stored = new_key(client, role, existing["webhook_secret"] if existing else None)
    entry = stored.to_entry()
    if existing:
        entry.update({f: existing[f] for f in WEBHOOK_SECRET_FIELDS if existing.get(f)})
    entries.append(entry)
    report: dict[str, Any] = {
        "client": client,
        "role": str(role),
        "key": key,
        "key_sha256": stored.key_sha256,
        "webhook_secret": None if existing else stored.webhook_secret,
    }
    messages = [
        f"Created a {role} key for {client!r} (sha256 {stored.key_sha256[:SHOWN_HASH]}…).",
        "API key (shown once; only its hash is stored):",
        f"  {key}",
    ]
    if existing:
        messages.append(f"{client!r} keeps its webhook secret (rotate-webhook-secret changes it).")
    else:
        messages += ["Webhook secret (shown once; deliveries are signed with it):"]
        messages.append(f"  {stored.webhook_secret}")
    report["messages"] = messages
    return report


def cmd_list(args: argparse.Namespace, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Every entry: client, role, hash prefix, whether it has a webhook secret (and whether
    that is in the Standard Webhooks form), rotation."""
    rows = _listing(entries, time.time())
    return {"keys": rows, "messages": []}


def cmd_revoke(args: argparse.Namespace, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Remove the client's key entries, or the one entry whose hash starts with the prefix."""
    if args.client is not None:
        doomed = _entries_of(entries, args.client)
        if not doomed:
            raise AdminError(f"No keys of client {args.client!r} in the file.")
    else:
        prefix = args.key_sha256.lower()
        if len(prefix) < MIN_HASH_PREFIX or not re.fullmatch(r"[0-9a-f]+", prefix):
            raise AdminError(
                f"--key-sha256 takes at least {MIN_HASH_PREFIX} hex digits of the key's hash."
            )
        doomed = [e for e in entries if parse_entry(e).key_sha256.startswith(prefix)]
        if not doomed:
            raise AdminError(f"No key whose hash starts with {prefix!r}.")
        if len(doomed) > 1:
            raise AdminError(f"{len(doomed)} keys' hashes start with {prefix!r}: give more digits.")
    entries[:] = [entry for entry in entries if not any(entry is d for d in doomed)]
    revoked = [parse_entry(e) for e in doomed]
    clients = sorted({k.client for k in revoked})
    return {
        "revoked": [
            {"client": k.client, "key_sha256_prefix": k.key_sha256[:SHOWN_HASH]} for k in revoked
        ],
        "messages": [
            f"Revoked {len(revoked)} key(s) of {', '.join(map(repr, clients))}. The API refuses "
            "them once it sees the new file: within seconds locally; in Kubernetes, once the "
            "Secret is applied and the kubelet refreshed the mount (a minute or two)."
        ],
    }


def cmd_rotate(args: argparse.Namespace, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A new webhook secret for the client; the old one keeps signing for the grace period."""
    mine = _entries_of(entries, args.client)
    if not mine:
        raise AdminError(f"No client {args.client!r} in the file.")
    if args.grace_s < 0:
        raise AdminError("--grace-s cannot be negative.")
    now = time.time()
    current = next((parse_entry(e).webhook_secret for e in mine if e.get("webhook_secret")), "")
    secret = new_webhook_secret()
    until = now + args.grace_s
    for entry in mine:
        for field in WEBHOOK_SECRET_FIELDS:
            entry.pop(field, None)
        entry["webhook_secret"] = secret
        if current and args.grace_s > 0:
            entry["previous_webhook_secret"] = current
            entry["previous_until"] = round(until, 3)
    grace = (
        f"The old secret also signs deliveries until {_utc(until)} (each delivery carries "
        "both signatures); switch the receiver to the new one before then."
        if current and args.grace_s > 0
        else "The old secret no longer signs anything."
    )
    if current and args.grace_s > 0 and not is_standard_secret(current):
        grace += (
            " The old secret is not in the Standard Webhooks form: it signs Imgq-Signature "
            "only, webhook-signature carries the new one's alone."
        )
    return {
        "client": args.client,
        "webhook_secret": secret,
        "previous_until": until if current and args.grace_s > 0 else None,
        "messages": [
            f"New webhook secret of {args.client!r} (shown once):",
            f"  {secret}",
            grace,
        ],
    }


def _block(text: str, indent: str) -> str:
    return "\n".join(indent + line for line in text.splitlines())


def _secret_manifest(name: str, component: str, namespace: str, entries: list[Any]) -> str:
    """A Secret holding ``api-keys.json``; YAML written by hand (the JSON is a literal block,
    ASCII only), so the command needs nothing beyond the standard library."""
    content = json.dumps(entries, indent=2, sort_keys=True)
    lines = [
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {name}",
        *([f"  namespace: {namespace}"] if namespace else []),
        "  labels:",
        "    app.kubernetes.io/name: imgq",
        "    app.kubernetes.io/part-of: imgq",
        f"    app.kubernetes.io/component: {component}",
        "type: Opaque",
        "stringData:",
        f"  {MOUNTED_FILE}: |",
        _block(content, "    "),
    ]
    return "\n".join(lines) + "\n"


def api_copy(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The API's keys: every entry with a key hash, webhook secrets left out."""
    return [
        {k: v for k, v in entry.items() if k not in WEBHOOK_SECRET_FIELDS}
        for entry in entries
        if entry.get("key_sha256")
    ]


def webhooks_copy(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The webhooks worker's keys: each client's secrets once, and nothing else."""
    copy: dict[str, dict[str, Any]] = {}
    for entry in entries:
        key = parse_entry(entry)
        if key.webhook_secret and key.client not in copy:
            copy[key.client] = {
                "client": key.client,
                **{f: entry[f] for f in WEBHOOK_SECRET_FIELDS if entry.get(f)},
            }
    return list(copy.values())


def kubernetes_manifests(entries: list[dict[str, Any]], namespace: str = "imgq") -> str:
    """The two Secrets, as one multi-document YAML stream."""
    return (
        _secret_manifest(API_MANIFEST, "api", namespace, api_copy(entries))
        + "---\n"
        + _secret_manifest(WEBHOOKS_MANIFEST, "webhooks", namespace, webhooks_copy(entries))
    )


_SECRET_CELLS = {"standard": "yes", "legacy": "legacy: rotate", None: "no"}
"""The WEBHOOK SECRET column: ``legacy`` secrets sign no Standard Webhooks headers."""


def _print_listing(rows: list[dict[str, Any]]) -> None:
    header = ["CLIENT", "ROLE", "KEY SHA256", "WEBHOOK SECRET", "ROTATION"]
    cells = [
        header,
        *[
            [
                row["client"],
                row["role"],
                row["key_sha256_prefix"] + "…" if row["key_sha256_prefix"] else "-",
                _SECRET_CELLS[row["webhook_secret_form"]],
                row["rotation"],
            ]
            for row in rows
        ],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


COMMANDS = {
    "create": (cmd_create, True),
    "list": (cmd_list, False),
    "revoke": (cmd_revoke, True),
    "rotate-webhook-secret": (cmd_rotate, True),
}
"""Each command and whether it changes the file."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgq-admin", description="Manage imgq's API keys and webhook secrets."
    )
    groups = parser.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="API keys and webhook secrets")
    commands = keys.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", help="the keys file (default: IMGQ_API_KEYS_FILE)")
    common.add_argument(
        "--kubernetes",
        action="store_true",
        help="print the imgq-api-keys and imgq-webhook-secrets Secret manifests instead",
    )
    common.add_argument(
        "--namespace", default="imgq", help="the manifests' namespace ('' for none)"
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    create = commands.add_parser("create", parents=[common], help="add a key for a client")
    create.add_argument("--client", required=True)
    create.add_argument("--role", choices=[str(r) for r in Role], default=str(Role.CLIENT))
    commands.add_parser("list", parents=[common], help="list the keys (never a secret)")
    revoke = commands.add_parser("revoke", parents=[common], help="remove keys")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--client", help="every key of this client")
    which.add_argument("--key-sha256", help="the key whose hash starts with this prefix")
    rotate = commands.add_parser(
        "rotate-webhook-secret", parents=[common], help="a new webhook secret for a client"
    )
    rotate.add_argument("--client", required=True)
    rotate.add_argument(
        "--grace-s",
        type=float,
        default=DEFAULT_GRACE_S,
        help="how long the old secret keeps signing too (default: a day)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed command; returns the exit status."""
    if args.namespace and not NAMESPACE.fullmatch(args.namespace):
        raise AdminError(f"Not a Kubernetes namespace name: {args.namespace!r}.")
    command, changes = COMMANDS[args.command]
    path = _keys_file(args)
    with locked_key_file(path):
        try:
            entries = read_key_entries(path)
        except ValueError as exc:
            raise AdminError(f"{path} is not a valid keys file: {exc}") from exc
        report = command(args, entries)
        if changes:
            write_key_entries(path, entries)
    messages: list[str] = report.pop("messages")
    if args.kubernetes:
        print(kubernetes_manifests(entries, args.namespace), end="")
        if messages:  # the one-time secrets, kept out of the manifests' stream
            print("\n".join(messages), file=sys.stderr)
    elif args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif args.command == "list":
        _print_listing(report["keys"])
    else:
        print("\n".join([*messages, f"Keys file: {path}"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``imgq-admin``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (AdminError, OSError) as exc:
        print(f"imgq-admin: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
