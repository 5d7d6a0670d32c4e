"""The CLI's one mapping of errors: every failure is one line on stderr and an exit code
by kind, whichever package raised it; never a traceback on the terminal."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from inference.errors import BadInput
from marketplace import errors
from marketplace.cli import main
from marketplace.cli.group import domain_errors
from storage.errors import StoreUnavailable


def _run(exc: Exception) -> tuple[int, str]:
    @click.command()
    @domain_errors
    def failing() -> None:
        raise exc

    result = CliRunner().invoke(failing, [])
    return result.exit_code, result.stderr


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (errors.ConfigurationError("no chain to talk to"), 2, "configuration_error"),
        (errors.BadRequest("calls: must be at least 1"), 3, "bad_request"),
        (errors.NotSeller("only the seller"), 4, "not_seller"),
        (BadInput("input 'x' is wrong"), 3, "bad_input"),
        (errors.PaymentRequired("no calls left", []), 4, "payment_required"),
        (errors.ChainUnavailable("cannot reach the chain"), 5, "chain_unavailable"),
        (StoreUnavailable("the IPFS node did not answer"), 5, "store_unavailable"),
    ],
)
def test_every_error_is_one_line_and_an_exit_code_by_kind(exc, code, status):
    exit_code, stderr = _run(exc)
    assert exit_code == code
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert stderr.rstrip().endswith(f"[{status}]")


def test_an_unexpected_error_keeps_its_traceback_in_a_private_file():
    exit_code, stderr = _run(KeyError("surprise"))
    assert exit_code == 1 and "Traceback" not in stderr
    path = Path(re.search(r"the traceback is in (\S+) \[internal_error\]", stderr)[1])  # type: ignore[index]
    try:
        assert "KeyError: 'surprise'" in path.read_text()
        assert path.stat().st_mode & 0o077 == 0, "only its owner may read it"
    finally:
        path.unlink()


def test_a_bad_setting_names_the_variable_not_its_value(monkeypatch):
    monkeypatch.setenv("MODELMARKET_CONFIRMATIONS", "s3cr3t-looking-value")
    result = CliRunner().invoke(main, ["indexer", "--once"])
    assert result.exit_code == 2
    assert "MODELMARKET_CONFIRMATIONS" in result.stderr
    assert "s3cr3t-looking-value" not in result.stderr
