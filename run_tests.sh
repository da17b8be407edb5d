#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest offline (arguments go to pytest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
source "$ROOT/scripts/ensure_venv.sh"
# Hub calls otherwise hang for minutes before failing; tests use only what the project builds.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$ROOT/.venv/bin/python" -m pytest "$@"
