#!/usr/bin/env bash
# Install the peer gateways that bench/peers.py compares against, each into a virtualenv
# of its own under .venv-peers/ (gitignored). Optional: nothing in the project needs them,
# and they are never project dependencies.
#
#   bash scripts/install_peers.sh              # all three
#   bash scripts/install_peers.sh litellm      # one
#
# Pinned versions, and why:
# - vllm-router 0.1.17: the Rust load balancer of the vLLM project (round robin here).
# - py-spy 0.4.3: the sampling profiler bench/request_profile.py attaches to the server.
# - litellm[proxy] 1.82.6: LiteLLM 1.82.7 and 1.82.8 were published by an attacker on
#   2026-03-24 (TeamPCP, through a stolen PyPI token; 1.82.8 added `litellm_init.pth`, a
#   credential stealer run at every interpreter start: BerriAI/litellm#24512, OSV
#   MAL-2026-2144); the registry also lists an audit tool (litellm-check 0.1.0, 2026-10)
#   for a compromised 1.107.0 release. 1.82.6 is the last release before the March
#   incident; the exact pin keeps every later release out, and the wheel's SHA-256 (as
#   first downloaded here, 2026-11-30) is checked below.
# After installing, every .pth start-up file in each venv is listed against an allow-list;
# an unexpected one removes the venv and fails the script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.venv-peers"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
LITELLM_VERSION="1.82.6"
LITELLM_SHA256="164a3ef3e19f309e3cabc199bef3d2045212712fefdfa25fc7f75884a5b5b205"
VLLM_ROUTER_VERSION="0.1.17"
PY_SPY_VERSION="0.4.3"
# .pth files that pip, setuptools and these packages' known dependencies install.
ALLOWED_PTH='^(distutils-precedence|_virtualenv|a1_coverage)\.pth$'
WANT=("$@")
[ "${#WANT[@]}" -gt 0 ] || WANT=(vllm-router litellm py-spy)

check_pth() {  # $1: venv
  local bad
  bad="$(find "$1/lib" -maxdepth 3 -name '*.pth' -printf '%f\n' | grep -Ev "$ALLOWED_PTH" || true)"
  if [ -n "$bad" ]; then
    echo "error: unexpected .pth start-up file(s) in $1: $bad; removing the venv" >&2
    rm -rf "$1"
    exit 1
  fi
}

mkdir -p "$PEERS"
for peer in "${WANT[@]}"; do
  venv="$PEERS/$peer"
  case "$peer" in
    vllm-router)
      [ -x "$venv/bin/vllm-router" ] && { echo "[peers] vllm-router already in $venv"; continue; }
      "$PY" -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "vllm-router==$VLLM_ROUTER_VERSION"
      ;;
    litellm)
      [ -x "$venv/bin/litellm" ] && { echo "[peers] litellm already in $venv"; check_pth "$venv"; continue; }
      "$PY" -m venv "$venv"
      tmp="$(mktemp -d)"
      "$venv/bin/pip" download -q --disable-pip-version-check --no-deps "litellm==$LITELLM_VERSION" -d "$tmp"
      got="$(sha256sum "$tmp"/litellm-"$LITELLM_VERSION"-*.whl | cut -d' ' -f1)"
      if [ "$got" != "$LITELLM_SHA256" ]; then
        echo "error: litellm $LITELLM_VERSION wheel has SHA-256 $got, expected $LITELLM_SHA256; not installing" >&2
        rm -rf "$tmp" "$venv"
        exit 1
      fi
      "$venv/bin/pip" install -q --disable-pip-version-check "$tmp"/litellm-"$LITELLM_VERSION"-*.whl "litellm[proxy]==$LITELLM_VERSION"
      rm -rf "$tmp"
      ;;
    py-spy)
      [ -x "$venv/bin/py-spy" ] && { echo "[peers] py-spy already in $venv"; continue; }
      "$PY" -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "py-spy==$PY_SPY_VERSION"
      ;;
    *) echo "error: unknown peer '$peer' (known: vllm-router, litellm, py-spy)" >&2; exit 2 ;;
  esac
  check_pth "$venv"
  echo "[peers] $peer installed in $venv"
done
