"""API keys: created once, stored as SHA-256, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from shared.constants import API_KEY_PREFIX
from shared.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from shared.models import ApiKey, utcnow
from shared.settings import Settings


def hash_key(key: str) -> str:
    """SHA-256 of a key (keys are 256-bit random, so no slow hash is needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


SCOPES = ("read", "submit", "admin")
DEFAULT_SCOPES = ("read", "submit")


@dataclass(frozen=True)
class Caller:
    """Who is calling, and what their key allows."""

    name: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        """Forbidden unless the key has scope."""
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope")


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Validated, de-duplicated scopes in canonical order."""
    wanted = set(scopes)
    unknown = wanted - set(SCOPES)
    if unknown:
        raise InvalidInput(
            f"unknown scope(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCOPES)}",
            "scopes",
        )
    if not wanted:
        raise InvalidInput("a key needs at least one scope", "scopes")
    return [s for s in SCOPES if s in wanted]


def create_key(
    session: Session, name: str, scopes: Iterable[str] = DEFAULT_SCOPES
) -> tuple[ApiKey, str]:
    """A new key; the plaintext is returned once and never stored."""
    prefix = secrets.token_hex(4)
    plaintext = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        name=name, prefix=prefix, key_hash=hash_key(plaintext), scopes=check_scopes(scopes)
    )
    session.add(row)
    session.flush()
    return row, plaintext


# Every request runs it: built once (see workers/statements.py for why).
_KEY_BY_HASH = select(ApiKey.name, ApiKey.key_hash, ApiKey.scopes, ApiKey.revoked_at).where(
    ApiKey.key_hash == bindparam("p_hash")
)


def verify(session: Session, settings: Settings, presented: str | None) -> Caller:
    """The caller the presented key belongs to, or Unauthorized."""
    if not presented:
        raise Unauthorized("missing API key (send X-API-Key or Authorization: Bearer)")
    digest = hash_key(presented)
    for configured in settings.api_keys:
        if hmac.compare_digest(digest, hash_key(configured.get_secret_value())):
            return Caller(
                "settings", frozenset(SCOPES)
            )  # the operator's bootstrap keys may do everything
    row = session.connection().execute(_KEY_BY_HASH, {"p_hash": digest}).one_or_none()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        raise Unauthorized("invalid API key")
    return Caller(row.name, frozenset(row.scopes or DEFAULT_SCOPES))


def list_keys(session: Session) -> list[ApiKey]:
    """All keys, newest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id.desc())))


def revoke(session: Session, key_id: int) -> ApiKey:
    """Mark a key revoked; it stops working at once."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    row.revoked_at = row.revoked_at or utcnow()
    session.flush()
    return row
