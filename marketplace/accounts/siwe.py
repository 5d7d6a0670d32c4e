"""Sign-In with Ethereum (EIP-4361, the `siwe` library): stateless expiring nonces, the
message bounded and screened before the library parses it, and the terms a message
must name (our configured domain, URI and chain). Nonces are single use."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr
from sqlalchemy import delete
from sqlalchemy.orm import Session

from marketplace import errors
from marketplace.db.engine import insert
from marketplace.db.tables import Nonce

with warnings.catch_warnings():
    # abnf 2.8 warns about the EIP-4361 grammar's own rule redefinitions at import
    warnings.simplefilter("ignore")
    import siwe

NONCE_TTL = timedelta(minutes=10)
MIN_SECRET_BYTES = 32
# Used nonces are kept this long past their expiry, so replicas whose clocks differ a
# little never take an expired one for new.
NONCE_GRACE = timedelta(minutes=5)

# An EIP-4361 message is a few hundred characters; the longest we take still parses in
# about a millisecond. Checked before anything else looks at the text.
MAX_MESSAGE_CHARS = 2048
MAX_SIGNATURE_CHARS = 2 + 2 * 65
SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
# <expiry: 8 hex><random: 16 hex><mac: 24 hex>: alphanumeric, as EIP-4361 wants
NONCE = re.compile(r"[0-9a-f]{48}")
# The shape checked line by line (linear) before the library's regular expression sees the
# text: its resource list backtracks exponentially (`"\n- a:" * 16` + " " took 2 s, each
# more line x2.2), so resources are few, one per line, and no line is long.
MAX_LINES = 20
MAX_LINE_CHARS = 1024
MAX_RESOURCES = 4
RESOURCE = re.compile(r"- \S{1,256}")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SiweTerms:
    """What a sign-in message must name: our domain and URI (from the configured public
    URL, never from the request) and our chain."""

    domain: str
    scheme: str
    origin: str
    chain_id: int

    @classmethod
    def of(cls, public_url: str, chain_id: int) -> SiweTerms:
        """Terms for a gateway served at `public_url` (scheme://host[:port][/path])."""
        parts = urlsplit(public_url)
        if not parts.scheme or not parts.netloc:
            raise errors.ConfigurationError(f"the public URL {public_url!r} is not absolute")
        return cls(parts.netloc, parts.scheme, f"{parts.scheme}://{parts.netloc}", chain_id)


def message_for(address: str, terms: SiweTerms, nonce: str) -> str:
    """The EIP-4361 message `address` (EIP-55) signs to sign in here now."""
    return str(
        siwe.SiweMessage(
            domain=terms.domain,
            address=address,
            statement="Sign in to ModelMarket",
            uri=terms.origin,
            version="1",
            chain_id=terms.chain_id,
            nonce=nonce,
            issued_at=_now().isoformat().replace("+00:00", "Z"),
        ).prepare_message()
    )


def _screen(message: str) -> None:
    """Refuse, in one linear pass, any message the EIP-4361 parser could spend long on."""
    lines = message.split("\n")
    if len(lines) > MAX_LINES or any(len(line) > MAX_LINE_CHARS for line in lines):
        raise errors.SiweRejected(
            f"the message has more than {MAX_LINES} lines or a line over {MAX_LINE_CHARS}"
            " characters; a sign-in message is short"
        )
    if "Resources:" in lines:
        resources = lines[lines.index("Resources:") + 1 :]
        if len(resources) > MAX_RESOURCES or not all(RESOURCE.fullmatch(r) for r in resources):
            raise errors.SiweRejected(
                f"the message may list at most {MAX_RESOURCES} resources, each '- <uri>'"
                " on its own line"
            )


def _mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()[:24]


def issue_nonce(secret: bytes) -> str:
    """A fresh nonce for a SIWE message, valid for NONCE_TTL and once. Stateless: it
    carries its expiry and a MAC, so asking for one writes nothing (a flood of nonce
    requests costs a hash each); `verify_siwe` records it as used."""
    body = f"{int((_now() + NONCE_TTL).timestamp()):08x}{secrets.token_hex(8)}"
    return body + _mac(secret, body)


def _check_nonce(secret: bytes, nonce: str) -> datetime:
    if not NONCE.fullmatch(nonce) or not hmac.compare_digest(nonce[24:], _mac(secret, nonce[:24])):
        raise errors.SiweRejected("the nonce was not issued by this gateway; ask for a new one")
    expires = datetime.fromtimestamp(int(nonce[:8], 16), UTC)
    if expires <= _now():
        raise errors.SiweRejected("the nonce has expired; ask for a new one")
    return expires


def verify_siwe(
    session: Session, message: str, signature: str, *, terms: SiweTerms, secret: bytes
) -> str:
    """The checksummed address that signed `message`, after every check, cheapest first:
    sizes, the message parses, names our domain, URI and chain, carries a nonce we issued
    and that has not expired, the signature is the address's, and the nonce was never
    used (it is used up now)."""
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
        raise errors.SiweRejected(
            f"the message is over {MAX_MESSAGE_CHARS} characters; a sign-in message is short"
        )
    if not isinstance(signature, str) or not SIGNATURE.fullmatch(signature):
        raise errors.SiweRejected("the signature must be 0x and 65 bytes of hex")
    _screen(message)
    try:
        # The regular-expression parser: the library's ABNF one is super-linear
        # (1,000 chars 0.1-0.2 s; 16,000 chars ~64 s).
        parsed = siwe.SiweMessage.from_message(message=message, abnf=False)
    except Exception:
        raise errors.SiweRejected("the message is not a Sign-In with Ethereum message") from None
    if parsed.domain != terms.domain:
        raise errors.SiweRejected(f"the message is for {parsed.domain!r}, not {terms.domain!r}")
    if parsed.scheme and parsed.scheme != terms.scheme:
        raise errors.SiweRejected(f"the message is for {parsed.scheme}://, not {terms.scheme}://")
    uri = urlsplit(str(parsed.uri))
    if f"{uri.scheme}://{uri.netloc}" != terms.origin:
        raise errors.SiweRejected(f"the message's URI is not on {terms.origin}")
    if int(parsed.chain_id) != terms.chain_id:
        raise errors.SiweRejected(
            f"the message is for chain {parsed.chain_id}, not {terms.chain_id}"
        )
    expires = _check_nonce(secret, str(parsed.nonce))
    try:
        parsed.verify(signature, domain=terms.domain, nonce=parsed.nonce)
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
    _use_nonce(session, str(parsed.nonce), expires)
    return str(parsed.address)


def _use_nonce(session: Session, nonce: str, expires: datetime) -> None:
    """Record `nonce` as used, once; a second use is refused (the primary key)."""
    session.execute(delete(Nonce).where(Nonce.expires_at < _now() - NONCE_GRACE))  # stays small
    claimed = session.execute(
        insert(session, Nonce)
        .on_conflict_do_nothing()
        .values(value=nonce, expires_at=expires, used=True)
        .returning(Nonce.value)
    ).scalar_one_or_none()
    if claimed is None:
        raise errors.SiweRejected("the nonce was already used; ask for a new one")


def load_secret(path: Path, configured: SecretStr | None) -> bytes:
    """The gateway's secret (nonce MACs): the configured one, else a random one kept in
    `path` (mode 600), created once. Replicas on several hosts must configure one."""
    if configured is not None:
        secret = configured.get_secret_value().encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise errors.ConfigurationError(
                f"MODELMARKET_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes"
            )
        return secret
    try:
        stored = path.read_bytes()
        if len(stored) >= MIN_SECRET_BYTES:
            return stored
        path.unlink()  # a torn or emptied file: make a new secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # the first worker to get here wins; the others read its secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()
