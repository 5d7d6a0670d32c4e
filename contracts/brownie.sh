#!/usr/bin/env bash
# Run eth-brownie for this project: `contracts/brownie.sh test`, `... run scripts/deploy.py`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
export HOME="$here/.brownie-home"          # brownie writes ~/.brownie and ~/.solcx
export SOLCX_BINARY_PATH="$here/solc/bin"  # solc-v0.8.28 -> the solc-js shim
export PATH="$root/node_modules/@foundry-rs/anvil-linux-amd64/bin:$PATH"
mkdir -p "$HOME"
cd "$here"
if [[ "${1:-}" == "test" ]]; then
  # brownie launches anvil for the development network itself: give it a free port.
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  .venv/bin/brownie networks modify development port="$port" host=http://127.0.0.1 >/dev/null
fi
exec .venv/bin/brownie "$@"
