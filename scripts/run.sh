#!/usr/bin/env bash
# Quick start, command 1: set up .venv and start the server.
# With no arguments it serves the embedded default (emulated Qwen engines on loopback,
# every shipped workflow and router) on http://127.0.0.1:8000 and logs an example
# request. Extra arguments go to `python -m aragog_jax.serve` (e.g. --fleet FLEET.toml,
# --port 8001; see --help).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec python -m aragog_jax.serve "$@"
