"""API keys, the credential a signed-in address gets: shown once as
`mm_<id>_<secret>`, only sha256(secret) stored, and a short-lived in-process cache so a
paid call does not read the database to authenticate."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from marketplace import errors
from marketplace.db.tables import ApiKey

KEY_PREFIX = "mm_"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session, address: str, name: str, *, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """A new key for `address` (until revoked, or until `expires_at`): the row, and the
    full key text (shown once, never stored)."""
    name = name.strip() or "default"
    if len(name) > 100:
        raise errors.BadRequest("name: at most 100 characters")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id,
        address=address.lower(),
        name=name,
        secret_hash=_hash(secret),
        created_at=datetime.now(UTC),
        revoked_at=None,
        expires_at=expires_at,
    )
    session.add(row)
    return row, f"{KEY_PREFIX}{key_id}_{secret}"


def _parse(bearer: str | None) -> tuple[str, str]:
    if not bearer:
        raise errors.Unauthenticated("send an API key: Authorization: Bearer mm_...")
    if not bearer.startswith(KEY_PREFIX) or bearer.count("_") < 2:
        raise errors.Unauthenticated("the API key is malformed")
    key_id, secret = bearer[len(KEY_PREFIX) :].split("_", 1)
    return key_id, secret


def _check(row: ApiKey | None, secret: str) -> ApiKey:
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        raise errors.Unauthenticated("the API key is not valid")
    if row.revoked_at is not None:
        raise errors.Unauthenticated("the API key was revoked")
    if row.expires_at is not None:
        # SQLite gives back naive datetimes: they were written in UTC
        expires = row.expires_at.replace(tzinfo=row.expires_at.tzinfo or UTC)
        if expires <= datetime.now(UTC):
            raise errors.Unauthenticated("the API key expired: sign in again")
    return row


def authenticate(session: Session, bearer: str | None) -> ApiKey:
    """The live key behind an `Authorization: Bearer mm_<id>_<secret>` value."""
    key_id, secret = _parse(bearer)
    return _check(session.get(ApiKey, key_id), secret)


class KeyCache:
    """`authenticate` from keys read at most `ttl` seconds ago, so a paid call does not
    read the database. A key revoked through this process stops at once; through
    another process (another gateway worker), within `ttl`."""

    def __init__(self, reads: sessionmaker[Session], ttl: float, max_entries: int = 10_000) -> None:
        self.reads, self.ttl, self.max_entries = reads, ttl, max_entries
        self._verified: dict[str, tuple[float, ApiKey]] = {}  # key text -> (read at, row)

    def authenticate(self, bearer: str | None) -> ApiKey:
        """As `authenticate`."""
        now = time.monotonic()
        # a dict read is atomic: no lock on the hot path
        hit = self._verified.get(bearer) if bearer else None
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]  # this exact key text passed the checks below moments ago
        with self.reads() as session:
            row = authenticate(session, bearer)
        if len(self._verified) >= self.max_entries:  # keys cost nothing to make: bounded
            self._verified = {k: v for k, v in self._verified.items() if now - v[0] < self.ttl}
            if len(self._verified) >= self.max_entries:
                self._verified = {}
        self._verified[str(bearer)] = (now, row)
        return row

    def forget(self, key_id: str) -> None:
        """Drop a key (it was revoked here): the next call reads it again."""
        for bearer, (_at, row) in list(self._verified.items()):
            if row.id == key_id:
                self._verified.pop(bearer, None)


def list_keys(session: Session, address: str) -> list[ApiKey]:
    """An address's keys, newest first (secrets are never returned)."""
    return list(
        session.execute(
            select(ApiKey)
            .where(ApiKey.address == address.lower())
            .order_by(ApiKey.created_at.desc())
        ).scalars()
    )


def revoke_key(session: Session, address: str, key_id: str) -> None:
    """Revoke one of `address`'s keys; NotFound for a key that is not theirs."""
    done = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.address == address.lower(), ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey.id)
    ).scalar_one_or_none()
    if done is None:
        raise errors.NotFound(f"no live key {key_id} for {address}")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header's value, or None."""
    header = authorization or ""
    return header[7:].strip() if header[:7].lower() == "bearer " else None
