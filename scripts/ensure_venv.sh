#!/usr/bin/env bash
# Create or refresh .venv from the project's one dependency list (pyproject.toml + constraints.txt).
# Sourced by run_all.sh and run_tests.sh. Rebuilds only when either file changed since the last
# install (a stamp of their hashes lives in .venv/ifl-stamp), so a warm start costs well under a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${IFL_PYTHON:-python3}"
stamp_now="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
stamp_file="$VENV/ifl-stamp"

if [[ -x "$VENV/bin/python" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_now" ]]; then
    return 0 2>/dev/null || exit 0
fi

if ! "$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
    echo "ifl needs Python 3.11 or 3.12; '$PY' is $("$PY" --version 2>&1). Set IFL_PYTHON to another interpreter." >&2
    exit 1
fi

echo "[ifl] setting up $VENV (first run or dependency list changed; about 2 minutes)..." >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
# -c (constraints), not --no-deps: a CUDA machine also needs torch's nvidia-* wheels.
"$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[all]" >&2
# Notebooks run in this environment's own kernel, whatever jupyter the user has elsewhere.
"$VENV/bin/python" -m ipykernel install --sys-prefix --name ifl --display-name "Python (ifl)" >/dev/null
echo "$stamp_now" > "$stamp_file"
echo "[ifl] environment ready." >&2
