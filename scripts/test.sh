#!/usr/bin/env bash
# Quick start, command 2: set up .venv and run the whole test suite.
# Extra arguments go to pytest (e.g. -k space, -x).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec python -m pytest "$@"
