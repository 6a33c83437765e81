"""``revstore keys create|list|revoke`` on every backend: the token is printed once and
works, only its hash is stored, revocation sticks, bad input exits with its code."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from typer.testing import CliRunner, Result

from revstore import Store, schema
from revstore.cli import EXIT_INVALID, EXIT_NOT_FOUND, app

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(*args: str) -> Any:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return json.loads(result.stdout)


def fails(code: int, *args: str) -> dict[str, Any]:
    result = invoke(*args, "--json")
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    err: dict[str, Any] = json.loads(result.stderr)
    assert err["exit_code"] == code
    return err


def stored_hashes(store: Store, key_id: str) -> list[str]:
    with store.backend.engine.connect() as conn:
        a = schema.api_keys
        return [r[0] for r in conn.execute(select(a.c.token_hash).where(a.c.id == key_id))]


def test_create_list_revoke(backend_url: str, ns: str) -> None:
    made = ok(
        "keys", "create", "-n", ns, "--role", "write", "--name", "editor", "--db", backend_url
    )
    assert {k: made[k] for k in ("name", "namespace", "role", "revoked_at")} == {
        "name": "editor",
        "namespace": ns,
        "role": "write",
        "revoked_at": None,
    }
    token = made["token"]
    assert token.startswith(f"rsk_{made['id']}_")
    reader = ok("keys", "create", "--namespace", ns, "--role", "read", "--db", backend_url)
    assert reader["name"] == f"key-{reader['id']}" and reader["token"] != token
    with Store(backend_url) as store:
        # Only the SHA-256 is stored, and the token verifies.
        assert stored_hashes(store, made["id"]) == [hashlib.sha256(token.encode()).hexdigest()]
        verified = store.api_keys.verify(token)
        assert verified is not None and verified.id == made["id"] and verified.role == "write"

    listed = ok("keys", "list", "-n", ns, "--db", backend_url)["keys"]
    assert [k["id"] for k in listed] == [made["id"], reader["id"]]
    assert all("token" not in k for k in listed)
    assert token not in json.dumps(listed)
    assert ok("keys", "list", "-n", f"{ns}-none", "--db", backend_url) == {"keys": []}

    revoked = ok("keys", "revoke", made["id"], "--db", backend_url)
    assert revoked["id"] == made["id"] and revoked["revoked_at"] is not None
    # Idempotent: revoking again keeps the first revocation time.
    assert ok("keys", "revoke", made["id"], "--db", backend_url) == revoked
    with Store(backend_url) as store:
        assert store.api_keys.verify(token) is None
        assert store.api_keys.verify(reader["token"]) is not None
    states = {
        k["id"]: k["revoked_at"] for k in ok("keys", "list", "-n", ns, "--db", backend_url)["keys"]
    }
    assert states == {made["id"]: revoked["revoked_at"], reader["id"]: None}


def test_human_output_shows_the_token_once(backend_url: str, ns: str) -> None:
    result = invoke("keys", "create", "-n", ns, "--role", "admin", "--db", backend_url)
    assert result.exit_code == 0, result.output
    token = next(w for w in result.stdout.split() if w.startswith("rsk_"))
    assert "shown once" in result.stderr
    with Store(backend_url) as store:
        key = store.api_keys.verify(token)
        assert key is not None and key.role == "admin"
    listing = invoke("keys", "list", "-n", ns, "--db", backend_url)
    assert listing.exit_code == 0 and key.id in listing.stdout and token not in listing.stdout


def test_star_namespace(backend_url: str, ns: str) -> None:
    made = ok("keys", "create", "-n", "*", "--role", "read", "--name", ns, "--db", backend_url)
    assert made["namespace"] == "*"
    assert made["id"] in [
        k["id"] for k in ok("keys", "list", "-n", "*", "--db", backend_url)["keys"]
    ]


def test_bad_input_exits_with_its_code(backend_url: str, ns: str) -> None:
    err = fails(EXIT_INVALID, "keys", "create", "-n", ns, "--role", "owner", "--db", backend_url)
    assert err["error"] == "InvalidInput" and "role" in err["message"]
    fails(EXIT_INVALID, "keys", "create", "-n", "", "--role", "read", "--db", backend_url)
    fails(
        EXIT_INVALID,
        "keys",
        "create",
        "-n",
        ns,
        "--role",
        "read",
        "--name",
        " ",
        "--db",
        backend_url,
    )
    fails(
        EXIT_INVALID,
        "keys",
        "create",
        "-n",
        ns,
        "--role",
        "read",
        "--name",
        "x" * 256,
        "--db",
        backend_url,
    )
    fails(EXIT_INVALID, "keys", "revoke", "not-an-id", "--db", backend_url)
    err = fails(EXIT_NOT_FOUND, "keys", "revoke", "0123456789abcdef", "--db", backend_url)
    assert err["error"] == "NotFound"
    # Missing required options are usage errors (2), from the parser.
    assert invoke("keys", "create", "-n", ns, "--db", backend_url).exit_code == 2
    assert invoke("keys", "create", "--role", "read", "--db", backend_url).exit_code == 2
    # Nothing was created by the refused commands.
    assert ok("keys", "list", "-n", ns, "--db", backend_url) == {"keys": []}
