#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the notebooks headlessly.
#   ./run_all.sh [PARAMS] [--only NN[,NN]] [--from NN] [-p section.key=value]... [--check] [--help]
# PARAMS defaults to params/default.yaml (the miniature world, CPU, minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
source "$ROOT/scripts/ensure_venv.sh"
# Runs read local stand-ins and the hub's cache; set HF_HUB_OFFLINE=0 yourself to allow downloads.
export TOKENIZERS_PARALLELISM=false
exec "$ROOT/.venv/bin/python" -m ifl.runner "$@"
