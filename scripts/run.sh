#!/usr/bin/env bash
# Quick start, command 1: set up .venv and run the main job.
# Until the server lands, the main job is the configuration-space inspector on a
# shipped workflow. Extra arguments are passed to it.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
if [ "$#" -eq 0 ]; then set -- self_refine_humaneval --family qwen; fi
exec python -m aragog_jax.inspect "$@"
