"""Where the tests find the real parts: the compiled contracts and the anvil binary."""

from __future__ import annotations

from marketplace.config import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "contracts" / "artifacts"
ANVIL_BIN = PROJECT_ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
JSIPFS = PROJECT_ROOT / "node_modules/.bin/jsipfs"
