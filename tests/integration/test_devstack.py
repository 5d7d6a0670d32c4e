"""The embedded default: anvil with kept state, one deployment reused, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from marketplace.chain.market import Marketplace
from marketplace.chain.transactions import connect
from marketplace.config import PROJECT_ROOT
from marketplace.db.engine import make_engine, session_factory
from marketplace.devstack.anvil import DEMO_TOKENS, dev_signers
from marketplace.devstack.deploy import deployment_is_live, running
from marketplace.devstack.ports import free_port
from tests.support.paths import ARTIFACTS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is gone for our purposes
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_second_run_reuses_deployment_and_state(settings):
    with running(settings) as (rpc_url, first, new):
        assert new
        market = Marketplace(connect(rpc_url), first, ARTIFACTS)
        seller = dev_signers(2)[1]
        model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", 5)
        # the demo accounts hold tokens to buy with
        assert market.token_balance(seller.address) == DEMO_TOKENS
    with running(settings) as (rpc_url, second, new):
        assert not new
        assert second == first
        market = Marketplace(connect(rpc_url), second, ARTIFACTS)
        # the chain itself came back: the listing made in the first run is still there
        assert market.listing(model_id).model_cid == "bafk-model"


def test_stale_deployment_record_is_replaced(settings):
    with running(settings) as (_, _first, _new):
        pass
    (settings.data_dir / "anvil-state.json").unlink()  # the chain is gone, the record stays
    with running(settings) as (rpc_url, second, new):
        assert new
        assert deployment_is_live(connect(rpc_url), second)


def test_make_run_command_starts_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MODELMARKET_DATA_DIR": str(tmp_path / "data"),
        "MODELMARKET_HTTP_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketplace.cli", "run"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 180  # the demo models are checked and listed first
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "ready" in line or not line:
                break
        text = "".join(lines)
        assert "ready. Ctrl-C to stop." in text, text
        anvil_pid = int(text.split("(pid ")[1].split(")")[0])
        assert _alive(anvil_pid)
        assert "marketplace  0x" in text and "token (MMT)  0x" in text
        # the gateway serves both API families on the configured port
        gateway = f"http://127.0.0.1:{port}"
        assert f"gateway      {gateway}/api/v1 and {gateway}/v2" in text
        ready = requests.get(f"{gateway}/v2/health/ready", timeout=10).json()
        assert ready["ready"] is True and ready["indexer"]["status"] in ("ok", "not_started")
        # make run's gateway takes x402 (a dev settler): its reconciler runs in the worker
        assert ready["x402"]["reconciler"] == "running"
        marketplace = text.split("marketplace  ")[1].split()[0]
        assert requests.get(f"{gateway}/api/v1/deployment", timeout=10).json()["marketplace"] == (
            marketplace
        )
        # a live market: the demo models listed and checked, and a paid call that works
        # exactly as printed
        listed = requests.get(f"{gateway}/api/v1/models", timeout=10).json()
        assert listed["total"] >= 3 and all(m["model_status"] == "ok" for m in listed["models"])
        curl = next(x.strip() for x in lines if x.strip().startswith("curl "))
        answer = subprocess.run(
            ["bash", "-c", curl + " -i"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        # header names are case-insensitive; granian (hyper) sends them in lower case
        assert answer.startswith("HTTP/1.1 200") and "x-credits-remaining: 99" in answer.lower()
        assert '"name":"label"' in answer
    except BaseException:
        # a failed assertion must not leave the stack running: Ctrl-C stops its children
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        raise
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "stopped." in rest
    assert not _alive(anvil_pid)
    with pytest.raises(requests.ConnectionError):  # the gateway stopped too
        requests.get(f"{gateway}/v2/health/live", timeout=5)


def test_missing_anvil_is_a_clear_cli_error(tmp_path):
    env = {
        **os.environ,
        "MODELMARKET_DATA_DIR": str(tmp_path / "d"),
        "MODELMARKET_ANVIL_BIN": str(tmp_path / "no-anvil"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "run"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2  # a missing or invalid setting (README: exit codes)
    assert proc.stderr.strip().splitlines() == [
        f"error: anvil is not installed at {tmp_path / 'no-anvil'}; run `make setup`"
        " [configuration_error]"
    ]


def test_indexer_command_catches_up_with_progress(settings, tmp_path):
    from sqlalchemy import select

    from marketplace.db.tables import Credit, Listing

    env = {
        **os.environ,
        "MODELMARKET_DATA_DIR": str(settings.data_dir),
        "MODELMARKET_CONFIRMATIONS": "1",
        "COLUMNS": "200",
    }
    with running(settings) as (rpc_url, dep, _new):
        w3 = connect(rpc_url)
        market = Marketplace(w3, dep, ARTIFACTS)
        _, seller, buyer = dev_signers(3)
        model_id, _ = market.list_model(seller, "bafk-model", "bafk-card", 10)
        market.approve(buyer, 1000)
        market.purchase(buyer, model_id, 9, 10)
        w3.provider.make_request("anvil_mine", [2])  # type: ignore[arg-type]
        proc = subprocess.run(
            [sys.executable, "-m", "marketplace.cli", "indexer", "--once"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert "events/s" in proc.stdout and "left" in proc.stdout
    assert "indexed up to block" in proc.stdout
    sessions = session_factory(make_engine(settings.db_url))
    with sessions() as s:
        assert s.get(Listing, model_id) is not None
        credit = s.execute(select(Credit.remaining).where(Credit.model_id == model_id)).scalar()
        assert credit == 9


def test_indexer_command_without_a_chain_is_one_clear_line(tmp_path):
    env = {**os.environ, "MODELMARKET_DATA_DIR": str(tmp_path / "none")}
    proc = subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "indexer", "--once"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2  # a missing or invalid setting (README: exit codes)
    assert proc.stderr.strip() == (
        "error: no chain to talk to: set MODELMARKET_RPC_URL, or start `make run` first"
        " [configuration_error]"
    )
