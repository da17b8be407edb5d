#!/usr/bin/env bash
# JupyterLab on this project: notebooks/NN_*.py open as notebooks (Jupytext) in the project's
# kernel, "Python (ifl)"; a rendered run (rendered/<run>/index.html, NN_*.html) opens beside them.
#   ./lab.sh [jupyter lab options]        e.g. ./lab.sh --no-browser --port 8899
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
source "$ROOT/scripts/ensure_venv.sh"
# .jupyter/labconfig/ makes "Jupytext Notebook" the default viewer of .py files (a double-click
# opens a notebook; right-click > Open With > Editor still opens the text)
export JUPYTER_CONFIG_PATH="$ROOT/.jupyter${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
export TOKENIZERS_PARALLELISM=false
exec "$ROOT/.venv/bin/jupyter" lab "$@"
