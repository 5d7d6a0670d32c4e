"""Contract artifacts (ABI, bytecode, compiler) and the deployment record: which
contracts, at which addresses, on which chain. Loaded once by their users."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from marketplace import errors

CONTRACT_NAMES = ("ModelMarketplace", "MarketToken", "UsageAnchors")


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: its ABI, creation bytecode and the compiler that made it."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler: str


def load_artifact(artifacts_dir: Path, name: str) -> Artifact:
    """Read `<artifacts_dir>/<name>.json` as written by `contracts/compile.py`."""
    path = artifacts_dir / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise errors.ConfigurationError(f"contract artifact {path} is missing") from exc
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=data["bytecode"],
        compiler=data["compiler"]["version"],
    )


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on which chain; written once by a deploy."""

    chain_id: int
    marketplace: str
    token: str
    start_block: int
    owner: str
    treasury: str
    anchors: str | None = None  # UsageAnchors (records written before it have none)

    def save(self, path: Path) -> None:
        """Write the record atomically (temp file + rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        """Read a record written by `save`."""
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError as exc:
            raise errors.ConfigurationError(
                f"no deployment record at {path}; deploy first (make run does)"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise errors.ConfigurationError(f"deployment record {path} is unreadable") from exc
