"""Sign-In with Ethereum (EIP-4361, the `siwe` library) and the API keys it yields.

Nonces are single use and expire; a verified message must name our domain and chain.
An API key is shown once as `mm_<id>_<secret>`; only sha256(secret) is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import warnings
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from marketplace import errors
from marketplace.models import ApiKey, Nonce

with warnings.catch_warnings():
    # abnf 2.8 warns about the EIP-4361 grammar's own rule redefinitions at import
    warnings.simplefilter("ignore")
    import siwe

NONCE_TTL = timedelta(minutes=10)
KEY_PREFIX = "mm_"


def _now() -> datetime:
    return datetime.now(UTC)


def issue_nonce(session: Session) -> str:
    """A fresh single-use nonce for a SIWE message (expires after NONCE_TTL)."""
    value = siwe.generate_nonce()
    session.add(Nonce(value=value, expires_at=_now() + NONCE_TTL, used=False))
    return str(value)


def verify_siwe(
    session: Session, message: str, signature: str, *, domain: str, chain_id: int
) -> str:
    """The checksummed address that signed `message`, after every check: the message
    parses, names our domain and chain, carries a nonce we issued, unused and unexpired
    (it is used up now), and the signature is the address's."""
    try:
        parsed = siwe.SiweMessage.from_message(message=message)
    except Exception:
        raise errors.SiweRejected("the message is not a Sign-In with Ethereum message") from None
    if parsed.domain != domain:
        raise errors.SiweRejected(f"the message is for {parsed.domain!r}, not {domain!r}")
    if int(parsed.chain_id) != chain_id:
        raise errors.SiweRejected(f"the message is for chain {parsed.chain_id}, not {chain_id}")
    claimed = session.execute(
        update(Nonce)
        .where(Nonce.value == parsed.nonce, Nonce.used.is_(False), Nonce.expires_at > _now())
        .values(used=True)
        .returning(Nonce.value)
    ).scalar_one_or_none()
    if claimed is None:
        raise errors.SiweRejected(
            "the nonce is unknown, already used or expired; ask for a new one"
        )
    try:
        parsed.verify(signature, domain=domain, nonce=parsed.nonce)
    except siwe.ExpiredMessage:
        raise errors.SiweRejected("the message has expired") from None
    except siwe.NotYetValidMessage:
        raise errors.SiweRejected("the message is not valid yet") from None
    except siwe.InvalidSignature:
        raise errors.SiweRejected(
            f"the signature is not {parsed.address}'s signature of this message"
        ) from None
    except siwe.VerificationError as exc:
        raise errors.SiweRejected(f"the message was refused: {type(exc).__name__}") from None
    except Exception:
        raise errors.SiweRejected("the signature is malformed") from None
    return str(parsed.address)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, address: str, name: str) -> tuple[ApiKey, str]:
    """A new key for `address`: the row, and the full key text (shown once, never stored)."""
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
        created_at=_now(),
        revoked_at=None,
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
    return row


def authenticate(session: Session, bearer: str | None) -> ApiKey:
    """The live key behind an `Authorization: Bearer mm_<id>_<secret>` value."""
    key_id, secret = _parse(bearer)
    return _check(session.get(ApiKey, key_id), secret)


class KeyCache:
    """`authenticate` from keys read at most `ttl` seconds ago, so a paid call does not
    read the database. A key revoked through this process stops at once; through
    another process (another gateway worker), within `ttl`."""

    def __init__(self, reads: sessionmaker[Session], ttl: float) -> None:
        self.reads, self.ttl = reads, ttl
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
        .values(revoked_at=_now())
        .returning(ApiKey.id)
    ).scalar_one_or_none()
    if done is None:
        raise errors.NotFound(f"no live key {key_id} for {address}")
