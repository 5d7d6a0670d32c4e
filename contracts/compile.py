"""Compile the Solidity sources with solc-js (through `solc/solc`) into `artifacts/`.

`python contracts/compile.py` rewrites the artifacts; `--check` exits 1 when the
committed artifacts differ from a fresh compile. Source unit names are relative
(`src/...`, `@openzeppelin/...`) so the output is the same in any checkout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHIM = HERE / "solc" / "solc"
ARTIFACTS = HERE / "artifacts"
CONTRACTS = {
    "ModelMarketplace": "src/ModelMarketplace.sol",
    "MarketToken": "src/MarketToken.sol",
    "UsageAnchors": "src/UsageAnchors.sol",
    # benchmarks and tests only: many purchases in one transaction
    "BulkBuyer": "src/test/BulkBuyer.sol",
    # tests only: logs shaped like the marketplace's, emitted by another contract
    "EventForger": "src/test/EventForger.sol",
    # tests only: an ERC-20 without permit, bought with approve + purchase
    "PlainToken": "src/test/PlainToken.sol",
}

SETTINGS: dict[str, object] = {
    "optimizer": {"enabled": True, "runs": 1000},
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


def compile_all() -> dict[str, dict[str, object]]:
    """Compile every contract and return the artifacts, keyed by contract name."""
    sources = {unit: {"content": (HERE / unit).read_text()} for unit in CONTRACTS.values()}
    request = {"language": "Solidity", "sources": sources, "settings": SETTINGS}
    proc = subprocess.run(
        [str(SHIM), "--standard-json", "--base-path", str(HERE)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE,
    )
    if proc.returncode != 0:
        sys.exit(f"solc failed: {proc.stderr.strip()}")
    output = json.loads(proc.stdout)
    problems = [e for e in output.get("errors", []) if e["severity"] == "error"]
    if problems:
        sys.exit("\n".join(e["formattedMessage"] for e in problems))
    version = (
        subprocess.run([str(SHIM), "--version"], capture_output=True, text=True, check=True)
        .stdout.split("Version: ")[1]
        .strip()
    )
    artifacts: dict[str, dict[str, object]] = {}
    for name, unit in CONTRACTS.items():
        compiled = output["contracts"][unit][name]
        artifacts[name] = {
            "contractName": name,
            "sourceName": unit,
            "abi": compiled["abi"],
            "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            "compiler": {"name": "solc-js", "version": version, "settings": SETTINGS},
        }
    return artifacts


def render(artifact: dict[str, object]) -> str:
    """The exact text an artifact file holds."""
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write or check the artifacts."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if artifacts are stale")
    args = parser.parse_args()
    artifacts = compile_all()
    stale = []
    for name, artifact in artifacts.items():
        path = ARTIFACTS / f"{name}.json"
        text = render(artifact)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            ARTIFACTS.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(
            f"stale artifacts: {', '.join(stale)}; run python contracts/compile.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
