"""The embedded chain: anvil from npm on a loopback port, and its public dev keys."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from marketplace import errors
from marketplace.chain.transactions import Signer, connect
from marketplace.devstack.ports import free_port

# anvil's default dev mnemonic: its keys are public knowledge and only ever hold
# play money on the local chain. They are never printed or logged.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEMO_ACCOUNTS = 5  # account 0 deploys and owns; 1..4 are demo sellers and buyers
DEMO_TOKENS = 1_000_000 * 10**18
SETTLER_ACCOUNT = DEMO_ACCOUNTS  # the embedded gateway's x402 settler (gas only, no tokens)
ANVIL_CHAIN_ID = 31337


def dev_key(index: int) -> str:
    """The 0x-hex key of anvil's dev account `index` (public test keys, play money)."""
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + str(acct.key.hex()).removeprefix("0x")


def dev_signers(count: int = DEMO_ACCOUNTS) -> list[Signer]:
    """Signers for anvil's first `count` dev accounts."""
    return [Signer(dev_key(i)) for i in range(count)]


@dataclass
class Anvil:
    """A running anvil process."""

    process: subprocess.Popen[bytes]
    rpc_url: str
    log_path: Path
    state_file: Path | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop anvil gracefully (it writes its state on the way out), then for sure."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_anvil(
    anvil_bin: Path,
    *,
    state_file: Path | None = None,
    port: int = 0,
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
    chain_id: int = ANVIL_CHAIN_ID,
    ready_timeout: float = 15.0,
) -> Anvil:
    """Start anvil on 127.0.0.1 and wait until it answers JSON-RPC.

    With `state_file`, the chain is loaded from it and written back on exit and
    every few seconds (so a hard kill loses little).
    """
    if not anvil_bin.exists():
        raise errors.ConfigurationError(f"anvil is not installed at {anvil_bin}; run `make setup`")
    port = port or free_port()
    args = [
        str(anvil_bin),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
    ]
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        args += ["--state", str(state_file), "--state-interval", "5"]
    args += list(extra_args)
    log_path = log_path or Path(os.devnull)
    with open(log_path, "ab") as log:
        # Its own session: a Ctrl-C reaches us, and we decide how anvil stops.
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    rpc_url = f"http://127.0.0.1:{port}"
    anvil = Anvil(process, rpc_url, log_path, state_file)
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            raise errors.ChainUnavailable(
                f"anvil exited with code {process.returncode} at start; see {log_path}"
            )
        try:
            connect(rpc_url, timeout=1.0, retries=0)  # this loop is the retry
            return anvil
        except errors.ChainUnavailable:
            if time.monotonic() > deadline:
                anvil.stop()
                raise errors.ChainUnavailable(
                    f"anvil did not answer on {rpc_url} within {ready_timeout:g} s"
                ) from None
            time.sleep(0.03)
