"""The CLI's keys: the signer from MODELMARKET_PRIVATE_KEY or an encrypted keystore file
(eth-account; its password from MODELMARKET_KEYSTORE_PASSWORD or a prompt), and the API
keys it signed in for, kept per gateway in the config dir (mode 600). No key is ever
printed, logged or written unencrypted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from marketplace import errors
from marketplace.config import Settings

if TYPE_CHECKING:
    from marketplace.chain.transactions import Signer

CREDENTIALS = "credentials.json"


def signer(settings: Settings) -> Signer:
    """Who signs this command's transactions and sign-ins."""
    from eth_account import Account

    from marketplace.chain.transactions import Signer

    if settings.private_key is not None:
        return Signer(settings.private_key)
    if settings.keystore is None:
        raise errors.ConfigurationError(
            "no key: set MODELMARKET_KEYSTORE (an encrypted keystore file) or"
            " MODELMARKET_PRIVATE_KEY"
        )
    try:
        keystore = json.loads(settings.keystore.read_text())
    except (OSError, ValueError):
        raise errors.ConfigurationError(
            f"the keystore {settings.keystore} cannot be read as a keystore file"
        ) from None
    password = (
        settings.keystore_password.get_secret_value()
        if settings.keystore_password is not None
        else click.prompt("keystore password", hide_input=True, err=True)
    )
    try:
        key = Account.decrypt(keystore, password)
    except ValueError:
        raise errors.Unauthenticated("the keystore password is wrong") from None
    finally:
        del password
    return Signer("0x" + bytes(key).hex())


def _credentials_path(settings: Settings) -> Path:
    return settings.config_dir / CREDENTIALS


def _read(settings: Settings) -> dict[str, Any]:
    try:
        data = json.loads(_credentials_path(settings).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_api_key(settings: Settings, address: str, api_key: str) -> Path:
    """Keep `api_key` for this gateway (mode 600, written atomically)."""
    data = _read(settings)
    data[settings.public] = {"address": address, "api_key": api_key}
    path = _credentials_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)
    return path


def api_key(settings: Settings) -> str:
    """The API key this user signed in with for this gateway."""
    saved = _read(settings).get(settings.public)
    if not isinstance(saved, dict) or not isinstance(saved.get("api_key"), str):
        raise errors.Unauthenticated(
            f"not signed in to {settings.public}: run `modelmarket login` first"
        )
    return str(saved["api_key"])
