"""API keys: who may read or write which namespace (``Store.api_keys``).

A key has an id, a name, a namespace (or ``*``, every namespace) and a role:

- ``read``: reads only;
- ``write``: reads and writes;
- ``admin``: everything in its namespace (today the same as ``write``; the
  administrative routes of later releases, e.g. retention, ask for it).

Its token, ``rsk_<id>_<secret>`` (``secret``: 32 random bytes, base64url), is returned
once by :meth:`ApiKeys.create`. Only the SHA-256 of the token is stored, in
``revstore_api_keys``, so every process on every host sees the same keys. Checking a
token finds the row by its id and compares the hashes with ``hmac.compare_digest``:
the time taken does not depend on how much of the token was right. The secret is
random and long, so a plain (unsalted) hash is enough: there is nothing to guess
from it.

No HTTP here: the service's use of it is in ``revstore.service.auth``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import methodcaller
from typing import Final

from revstore.config import MAX_AUTHOR
from revstore.content import optional_text, shown, validate_id
from revstore.errors import InvalidInput, NotFound
from revstore.operations import Flow, read_call

ROLES: Final = ("read", "write", "admin")
"""From least to most: each role may do what the ones before it may."""
ALL_NAMESPACES: Final = "*"
"""A key scoped to ``*`` applies to every namespace (a namespace literally named ``*``
is reachable with such keys only)."""
TOKEN_PREFIX: Final = "rsk_"
SECRET_BYTES: Final = 32
_TOKEN = re.compile(r"rsk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored, without its token."""

    id: str
    name: str
    namespace: str
    role: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def covers(self, namespace: str) -> bool:
        """The key applies to ``namespace``."""
        return self.namespace == ALL_NAMESPACES or self.namespace == namespace

    def may(self, role: str) -> bool:
        """The key's role includes ``role`` (``read`` < ``write`` < ``admin``)."""
        return ROLES.index(self.role) >= ROLES.index(validate_role(role))


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created, and its token: shown once, never stored."""

    key: ApiKey
    token: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def key_id_of(token: str) -> str | None:
    """The key id a well-formed token names; None for anything else."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def new_token() -> tuple[str, str]:
    """A fresh key id and its token."""
    key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=")
    return key_id, f"{TOKEN_PREFIX}{key_id}_{secret.decode('ascii')}"


def validate_role(role: object) -> str:
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {shown(role)}")
    return role


def validate_scope(namespace: object) -> str:
    """A namespace, or ``*`` for all of them."""
    if namespace == ALL_NAMESPACES:
        return ALL_NAMESPACES
    return validate_id(namespace, "namespace")


class ApiKeyOperations:
    """The key table's operations as flows (``revstore.operations``), run by a store:
    ``Store.api_keys`` blocks, ``AsyncStore.api_keys`` awaits."""

    def create(self, namespace: str, role: str, *, name: str | None = None) -> Flow[NewKey]:
        """A new key for ``namespace`` (or ``*``) with ``role``. ``name`` (default
        ``key-<id>``) is the author of the writes made with it that name none."""
        namespace = validate_scope(namespace)
        role = validate_role(role)
        name = optional_text(name, "name", MAX_AUTHOR)
        if name is not None and not name.strip():
            raise InvalidInput("name must not be blank")
        key_id, token = new_token()
        key = ApiKey(
            key_id,
            name if name is not None else f"key-{key_id}",
            namespace,
            role,
            datetime.now(UTC),
        )
        yield read_call(
            "api_keys.create", key_id, methodcaller("apikey_insert", key, hash_token(token))
        )
        return NewKey(key, token)

    def list(self, namespace: str | None = None) -> Flow[list[ApiKey]]:
        """Every key (revoked ones included), oldest first; only those scoped to
        exactly ``namespace`` when given."""
        if namespace is not None:
            namespace = validate_scope(namespace)
        keys: list[ApiKey] = yield read_call(
            "api_keys.list", namespace or "-", methodcaller("apikey_list", namespace)
        )
        return keys

    def get(self, key_id: str) -> Flow[ApiKey]:
        """A key by id, revoked or not (NotFound if there is none)."""
        found = yield from self._lookup(key_id)
        if found is None:
            raise NotFound(f"no API key {key_id!r}")
        return found[0]

    def revoke(self, key_id: str) -> Flow[ApiKey]:
        """Revoke a key (idempotent: a revoked key stays revoked as it was). Its token
        stops working at once in the database; a service caches a verified key for
        at most ``revstore.service.auth.CACHE_SECONDS``."""
        _check_id(key_id)
        yield read_call(
            "api_keys.revoke", key_id, methodcaller("apikey_revoke", key_id, datetime.now(UTC))
        )
        return (yield from self.get(key_id))

    def verify(self, token: str) -> Flow[ApiKey | None]:
        """The live key whose token this is; None for a malformed, unknown or revoked
        token or a wrong secret (the caller cannot tell which, on purpose)."""
        key_id = key_id_of(token) if isinstance(token, str) else None
        if key_id is None:
            return None
        found = yield from self._lookup(key_id)
        if found is None:
            return None
        key, stored = found
        # Constant time: the comparison takes as long however many characters match.
        if not hmac.compare_digest(hash_token(token), stored):
            return None
        return None if key.revoked else key

    def _lookup(self, key_id: str) -> Flow[tuple[ApiKey, str] | None]:
        _check_id(key_id)
        found: tuple[ApiKey, str] | None = yield read_call(
            "api_keys.get", key_id, methodcaller("apikey_get", key_id)
        )
        return found


def _check_id(key_id: object) -> None:
    if not isinstance(key_id, str) or not re.fullmatch(r"[0-9a-f]{16}", key_id):
        raise InvalidInput(f"an API key id is 16 hexadecimal digits, got {shown(key_id)}")
