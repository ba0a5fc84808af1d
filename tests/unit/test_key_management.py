"""``imgq-admin keys`` on a temporary keys file, the Secret manifests it prints, the keys file's
formats, the reloading key ring and the rotated signature header."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgq.admin import main
from imgq.api_keys import (
    ApiKey,
    KeyRing,
    ReloadingKeyRing,
    Role,
    hash_key,
    new_key,
    new_webhook_secret,
    parse_keys,
    read_key_entries,
    write_key_entries,
)
from imgq.webhooks.signing import sign, signature_header, signatures, verify


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], file: Path, *args: str) -> Any:
    code, out, err = run(capsys, "keys", *args, "--file", str(file), "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "api-keys.json"


def test_create_prints_the_key_once_and_stores_only_its_hash(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    code, out, _ = run(capsys, "keys", "create", "--client", "alice", "--file", str(keys_file))
    assert code == 0
    key = re.search(r"imgq_\S+", out)
    secret = re.search(r"whsec_\S+", out)
    assert key and secret
    text = keys_file.read_text()
    assert key.group() not in text and hash_key(key.group()) in text
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    ring = KeyRing.load(None, keys_file)
    found = ring.authenticate(key.group())
    assert found is not None and (found.client, found.role) == ("alice", Role.CLIENT)
    assert ring.webhook_secrets("alice") == [secret.group()]

    admin = run_json(capsys, keys_file, "create", "--client", "ops", "--role", "admin")
    assert KeyRing.load(None, keys_file).authenticate(admin["key"]).role is Role.ADMIN  # type: ignore[union-attr]
    assert [e["client"] for e in read_key_entries(keys_file)] == ["alice", "ops"]


def test_new_webhook_secrets_are_padded_standard_base64_of_32_bytes() -> None:
    for _ in range(20):
        secret = new_webhook_secret()
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert new_key("a", Role.CLIENT)[1].webhook_secret.startswith("whsec_")


def test_a_second_key_of_a_client_shares_its_webhook_secret(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    first = run_json(capsys, keys_file, "create", "--client", "alice")
    second = run_json(capsys, keys_file, "create", "--client", "alice")
    assert second["webhook_secret"] is None  # nothing new to show
    ring = KeyRing.load(None, keys_file)
    assert ring.webhook_secrets("alice") == [first["webhook_secret"]]
    assert all(e["webhook_secret"] == first["webhook_secret"] for e in read_key_entries(keys_file))
    assert ring.authenticate(first["key"]) and ring.authenticate(second["key"])


@pytest.mark.parametrize("name", ["", "system", "a b", "x" * 65, "-dash", "sl/ash"])
def test_create_refuses_bad_client_names(
    capsys: pytest.CaptureFixture[str], keys_file: Path, name: str
) -> None:
    code, _, err = run(capsys, "keys", "create", f"--client={name}", "--file", str(keys_file))
    assert code == 1 and "Client names" in err
    assert not keys_file.exists()


def test_list_shows_no_secret(capsys: pytest.CaptureFixture[str], keys_file: Path) -> None:
    alice = run_json(capsys, keys_file, "create", "--client", "alice")
    run_json(capsys, keys_file, "create", "--client", "ops", "--role", "admin")
    run_json(capsys, keys_file, "rotate-webhook-secret", "--client", "alice", "--grace-s", "60")
    rows = run_json(capsys, keys_file, "list")["keys"]
    assert [(r["client"], r["role"], r["webhook_secret"]) for r in rows] == [
        ("alice", "client", True),
        ("ops", "admin", True),
    ]
    assert rows[0]["key_sha256_prefix"] == alice["key_sha256"][:12]
    assert rows[0]["rotation"].startswith("previous valid until")
    assert rows[1]["rotation"] == "-"

    code, out, _ = run(capsys, "keys", "list", "--file", str(keys_file))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["CLIENT", "ROLE", "KEY", "SHA256", "WEBHOOK", "SECRET", "ROTATION"]
    assert lines[1].startswith("alice") and alice["key_sha256"][:12] in lines[1]
    assert "whsec_" not in out and alice["key"] not in out


def test_list_tells_a_legacy_secret_from_a_standard_one(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    legacy = ApiKey("old", Role.CLIENT, hash_key("imgq_old"), "whsec_" + "A-b_" * 10 + "xyz")
    write_key_entries(keys_file, [legacy.to_entry(), ApiKey("hooks-less").to_entry()])
    run_json(capsys, keys_file, "create", "--client", "new")

    rows = run_json(capsys, keys_file, "list")["keys"]

    assert [(r["client"], r["webhook_secret_form"]) for r in rows] == [
        ("old", "legacy"),  # still loads; signs Imgq-Signature only
        ("hooks-less", None),
        ("new", "standard"),
    ]
    _, out, _ = run(capsys, "keys", "list", "--file", str(keys_file))
    assert "legacy: rotate" in out.splitlines()[1]
    _, out, _ = run(
        capsys, "keys", "rotate-webhook-secret", "--client", "old", "--file", str(keys_file)
    )
    assert "signs Imgq-Signature only" in out
    rows = run_json(capsys, keys_file, "list")["keys"]
    assert rows[0]["webhook_secret_form"] == "standard"


def test_revoke_by_client_or_by_hash_prefix(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    a1 = run_json(capsys, keys_file, "create", "--client", "alice")
    a2 = run_json(capsys, keys_file, "create", "--client", "alice")
    bob = run_json(capsys, keys_file, "create", "--client", "bob")

    revoked = run_json(capsys, keys_file, "revoke", "--key-sha256", a1["key_sha256"][:10].upper())
    assert revoked["revoked"] == [{"client": "alice", "key_sha256_prefix": a1["key_sha256"][:12]}]
    ring = KeyRing.load(None, keys_file)
    assert ring.authenticate(a1["key"]) is None
    assert ring.authenticate(a2["key"]) and ring.authenticate(bob["key"])

    run_json(capsys, keys_file, "revoke", "--client", "alice")
    ring = KeyRing.load(None, keys_file)
    assert ring.authenticate(a2["key"]) is None and ring.webhook_secrets("alice") == []
    assert ring.authenticate(bob["key"]) is not None

    for args, why in (
        (["--client", "alice"], "No keys of client"),
        (["--key-sha256", "abc"], "at least 8 hex digits"),
        (["--key-sha256", "zzzzzzzzzz"], "at least 8 hex digits"),
        (["--key-sha256", ("1" if bob["key_sha256"].startswith("0") else "0") * 8], "No key"),
    ):
        code, _, err = run(capsys, "keys", "revoke", *args, "--file", str(keys_file))
        assert code == 1 and why in err, err
    with pytest.raises(SystemExit) as usage:  # one of the two, not both
        main(["keys", "revoke", "--client", "bob", "--key-sha256", "abcdefgh"])
    assert usage.value.code == 2


def test_revoke_refuses_an_ambiguous_prefix(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    write_key_entries(
        keys_file,
        [
            {"client": "a", "role": "client", "key_sha256": "abcdef01" + "0" * 56},
            {"client": "b", "role": "client", "key_sha256": "abcdef01" + "1" * 56},
        ],
    )
    code, _, err = run(
        capsys, "keys", "revoke", "--key-sha256", "abcdef01", "--file", str(keys_file)
    )
    assert code == 1 and "give more digits" in err
    assert len(read_key_entries(keys_file)) == 2


def test_rotation_keeps_the_old_secret_for_the_grace_period(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    alice = run_json(capsys, keys_file, "create", "--client", "alice")
    run_json(capsys, keys_file, "create", "--client", "alice")  # a second key, same secrets
    old = alice["webhook_secret"]
    before = time.time()
    rotated = run_json(capsys, keys_file, "rotate-webhook-secret", "--client", "alice")
    new = rotated["webhook_secret"]
    assert new != old and new.startswith("whsec_")
    assert before + 86400 <= rotated["previous_until"] <= time.time() + 86400
    for entry in read_key_entries(keys_file):
        assert (entry["webhook_secret"], entry["previous_webhook_secret"]) == (new, old)
    ring = KeyRing.load(None, keys_file)
    assert ring.webhook_secrets("alice") == [new, old]
    assert ring.webhook_secrets("alice", rotated["previous_until"] + 1) == [new]
    assert ring.webhook_secret("alice") == new

    # Rotating again retires the oldest; a grace of 0 retires the previous one at once.
    again = run_json(capsys, keys_file, "rotate-webhook-secret", "--client", "alice")
    assert KeyRing.load(None, keys_file).webhook_secrets("alice") == [again["webhook_secret"], new]
    last = run_json(
        capsys, keys_file, "rotate-webhook-secret", "--client", "alice", "--grace-s", "0"
    )
    assert last["previous_until"] is None
    assert KeyRing.load(None, keys_file).webhook_secrets("alice") == [last["webhook_secret"]]
    assert all("previous_webhook_secret" not in e for e in read_key_entries(keys_file))

    code, _, err = run(
        capsys, "keys", "rotate-webhook-secret", "--client", "nobody", "--file", str(keys_file)
    )
    assert code == 1 and "No client" in err


def test_edits_keep_other_entries_and_unknown_fields_as_they_are(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    key, stored = new_key("alice", Role.CLIENT)
    legacy = {  # the format written before (every field, a null-free old entry)
        "client": "legacy",
        "role": "admin",
        "key_sha256": hash_key("imgq_legacy"),
        "webhook_secret": "whsec_legacy",
    }
    extra = {**stored.to_entry(), "quota": {"jobs": 5}}  # a field some later version adds
    write_key_entries(keys_file, [legacy, extra])
    run_json(capsys, keys_file, "create", "--client", "bob")
    run_json(capsys, keys_file, "rotate-webhook-secret", "--client", "bob")
    run_json(capsys, keys_file, "revoke", "--client", "bob")
    assert read_key_entries(keys_file) == [legacy, extra]
    assert KeyRing.load(None, keys_file).authenticate(key) is not None


def test_kubernetes_prints_two_secrets_that_split_the_file(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    alice = run_json(capsys, keys_file, "create", "--client", "alice")
    run_json(capsys, keys_file, "create", "--client", "alice")
    run_json(capsys, keys_file, "create", "--client", "ops", "--role", "admin")
    code, out, err = run(
        capsys,
        "keys",
        "rotate-webhook-secret",
        "--client",
        "alice",
        "--file",
        str(keys_file),
        "--kubernetes",
    )
    assert code == 0
    new = re.search(r"whsec_\S+", err)
    assert new, "the new secret goes to stderr, out of the manifests' stream"
    documents = list(yaml.safe_load_all(out))
    assert [d["metadata"]["name"] for d in documents] == ["imgq-api-keys", "imgq-webhook-secrets"]
    for document in documents:
        assert (document["apiVersion"], document["kind"], document["type"]) == (
            "v1",
            "Secret",
            "Opaque",
        )
        assert document["metadata"]["namespace"] == "imgq"
        assert list(document["stringData"]) == ["api-keys.json"]
    api, webhooks = (json.loads(d["stringData"]["api-keys.json"]) for d in documents)

    assert [(e["client"], e["role"]) for e in api] == [
        ("alice", "client"),
        ("alice", "client"),
        ("ops", "admin"),
    ]
    assert not any("secret" in field for entry in api for field in entry)
    assert "whsec_" not in documents[0]["stringData"]["api-keys.json"]
    api_ring = KeyRing(parse_keys(json.dumps(api)))
    assert api_ring.authenticate(alice["key"]) is not None
    assert api_ring.webhook_secrets("alice") == []

    assert [sorted(e) for e in webhooks] == [
        ["client", "previous_until", "previous_webhook_secret", "webhook_secret"],
        ["client", "webhook_secret"],
    ]
    hooks_ring = KeyRing(parse_keys(json.dumps(webhooks)))
    assert hooks_ring.webhook_secrets("alice") == [new.group(), alice["webhook_secret"]]
    assert hooks_ring.authenticate(alice["key"]) is None  # authenticates nothing

    code, out, _ = run(
        capsys, "keys", "list", "--file", str(keys_file), "--kubernetes", "--namespace", ""
    )
    assert code == 0
    assert all("namespace" not in d["metadata"] for d in yaml.safe_load_all(out))
    code, _, err = run(
        capsys, "keys", "list", "--file", str(keys_file), "--kubernetes", "--namespace", "Bad_NS"
    )
    assert code == 1 and "namespace" in err


def test_writes_are_atomic_renames(capsys: pytest.CaptureFixture[str], keys_file: Path) -> None:
    run_json(capsys, keys_file, "create", "--client", "alice")
    inode = keys_file.stat().st_ino
    run_json(capsys, keys_file, "create", "--client", "bob")
    assert keys_file.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in keys_file.parent.iterdir()) == [
        "api-keys.json",
        "api-keys.json.lock",
    ]
    with pytest.raises(ValueError, match="bad API key entry"):  # never writes what won't parse
        write_key_entries(keys_file, [{"role": "client"}])
    assert len(read_key_entries(keys_file)) == 2


def test_a_bad_keys_file_is_an_error_not_a_rewrite(
    capsys: pytest.CaptureFixture[str], keys_file: Path
) -> None:
    keys_file.parent.mkdir(parents=True)
    keys_file.write_text("{not json")
    code, _, err = run(capsys, "keys", "create", "--client", "a", "--file", str(keys_file))
    assert code == 1 and "not a valid keys file" in err
    assert keys_file.read_text() == "{not json"


def test_the_default_file_comes_from_the_settings(
    capsys: pytest.CaptureFixture[str], keys_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGQ_API_KEYS_FILE", str(keys_file))
    code, out, _ = run(capsys, "keys", "create", "--client", "alice")
    assert code == 0 and str(keys_file) in out
    assert read_key_entries(keys_file)[0]["client"] == "alice"


def test_old_and_split_formats_parse() -> None:
    old = '[{"client": "a", "role": "admin", "key_sha256": "ABCD", "webhook_secret": "s"}]'
    assert parse_keys(old) == [ApiKey("a", Role.ADMIN, "abcd", "s")]
    written_by_asdict = json.dumps(
        [
            {
                "client": "a",
                "role": "client",
                "key_sha256": "ab",
                "webhook_secret": "s",
                "previous_webhook_secret": "",
                "previous_until": 0.0,
            }
        ]
    )
    assert parse_keys(written_by_asdict)[0].webhook_secrets(time.time()) == ["s"]
    api_only = parse_keys('[{"client": "a", "role": "client", "key_sha256": "ab"}]')[0]
    assert api_only.webhook_secrets(time.time()) == []
    hooks_only = parse_keys('[{"client": "a", "webhook_secret": "s"}]')[0]
    assert hooks_only.key_sha256 == "" and KeyRing([hooks_only]).authenticate("") is None
    for bad in (
        "{}",
        '[{"role": "client"}]',
        '[{"client": "a", "key_sha256": "ab"}]',  # a key without a role
        '[{"client": "a", "role": "root", "key_sha256": "ab"}]',
        '[{"client": "a", "webhook_secret": 5}]',
        '[{"client": "a", "previous_until": "tomorrow"}]',
        '["a"]',
    ):
        with pytest.raises(ValueError):
            parse_keys(bad)
    with pytest.raises(ValueError) as error:
        parse_keys('[{"client": "a", "key_sha256": "ab", "webhook_secret": "whsec_hidden"}]')
    assert "whsec_hidden" not in str(error.value)  # errors never print a secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bump(path: Path, entries: list[dict[str, Any]]) -> None:
    write_key_entries(path, entries)


def test_the_reloading_ring_follows_the_file_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    key_a, a = new_key("a", Role.CLIENT)
    key_b, b = new_key("b", Role.CLIENT)
    _bump(path, [a.to_entry(), b.to_entry()])
    inline_key, inline = new_key("inline", Role.ADMIN)
    clock = Clock()
    ring = ReloadingKeyRing(json.dumps([inline.to_entry()]), path, 1.0, clock)
    assert ring.current().authenticate(key_b) is not None

    _bump(path, [a.to_entry()])  # b revoked
    clock.now += 0.5
    assert ring.current().authenticate(key_b) is not None  # not looked yet
    clock.now += 0.6
    assert ring.current().authenticate(key_b) is None
    assert ring.current().authenticate(key_a) is not None
    assert ring.current().authenticate(inline_key) is not None  # inline keys stay

    same = ring.current()
    clock.now += 5
    assert ring.current() is same  # unchanged file: not re-read

    path.write_text("[{broken")  # a bad edit keeps the keys read before
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    clock.now += 1.1
    assert ring.current().authenticate(key_a) is not None

    _bump(path, [b.to_entry()])
    clock.now += 1.1
    assert ring.current().authenticate(key_b) is not None
    assert ring.current().authenticate(key_a) is None

    path.unlink()  # no file: no file keys
    clock.now += 1.1
    assert ring.current().authenticate(key_b) is None
    assert len(ring.current()) == 1


def test_a_bad_file_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    path.write_text('[{"client": "a"')
    with pytest.raises(ValueError):
        ReloadingKeyRing(None, path)


def test_a_rotated_header_lists_both_signatures() -> None:
    body, timestamp = b'{"id": "x"}', "1700000000"
    header = signature_header(["new", "old"], timestamp, body)
    assert header == f"{sign('new', timestamp, body)} {sign('old', timestamp, body)}"
    assert signatures(header) == [sign(s, timestamp, body)[3:] for s in ("new", "old")]
    assert verify("new", header, timestamp, body) and verify("old", header, timestamp, body)
    assert not verify("other", header, timestamp, body)
    assert signature_header(["only"], timestamp, body) == sign("only", timestamp, body)
    assert signatures("v0=abc v1= junk v1=def") == ["def"]
    for bad in ([], ["", "x"]):
        with pytest.raises(ValueError):
            signature_header(bad, timestamp, body)
