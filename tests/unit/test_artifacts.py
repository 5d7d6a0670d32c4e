"""The committed contract artifacts are exactly what the sources compile to."""

from __future__ import annotations

import json
import subprocess
import sys

from marketplace.config import PROJECT_ROOT


def test_committed_artifacts_match_a_fresh_compile():
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "contracts" / "compile.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_artifacts_record_their_compiler():
    for name in ("ModelMarketplace", "MarketToken", "BulkBuyer"):
        art = json.loads((PROJECT_ROOT / "contracts/artifacts" / f"{name}.json").read_text())
        assert art["compiler"]["version"].startswith("0.8.28+commit")
        assert art["compiler"]["settings"]["evmVersion"] == "cancun"
        assert art["bytecode"].startswith("0x6") and len(art["bytecode"]) > 1000
