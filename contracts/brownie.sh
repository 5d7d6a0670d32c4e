#!/usr/bin/env bash
# Run eth-brownie for this project:
#   contracts/brownie.sh test                      the contract tests on brownie's own anvil
#   contracts/brownie.sh deploy RPC_URL [OUT]      deploy to any chain (scripts/deploy.py)
#   contracts/brownie.sh <any brownie command>
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
if [[ "${1:-}" == "deploy" ]]; then
  # deploy RPC_URL [OUT]: register the URL as a network in brownie's private home.
  url="${2:?usage: brownie.sh deploy RPC_URL [OUT_JSON]}"
  [[ -n "${3:-}" ]] && export DEPLOYMENT_OUT="$(realpath -m "$3")"
  chainid="$(python3 -c 'import json,sys,urllib.request as u; r=u.Request(sys.argv[1], json.dumps({"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}).encode(), {"Content-Type":"application/json"}); print(int(json.load(u.urlopen(r, timeout=10))["result"],16))' "$url")"
  .venv/bin/brownie networks delete modelmarket-target >/dev/null 2>&1 || true
  .venv/bin/brownie networks add Ethereum modelmarket-target host="$url" chainid="$chainid" >/dev/null
  # brownie reloads its own record of earlier deployments on connect and fails when a
  # chain was reset; the record that counts is the deployment JSON this script writes.
  rm -rf "build/deployments/$chainid"
  # What `brownie run` does, minus its import of the script by its absolute path as a
  # dotted module name (a checkout under a folder with a dot, such as mktemp's, broke it).
  exec .venv/bin/python - <<'PY'
import runpy

from brownie import network, project

active = project.load()
active.load_config()
network.connect("modelmarket-target")
active._add_to_main_namespace()
runpy.run_path("scripts/deploy.py")["main"]()
PY
fi
exec .venv/bin/brownie "$@"
