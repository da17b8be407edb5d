"""The findings table of a run: runs/<run>/findings.csv, one row per finding of the paper.

Each notebook that measures a finding writes its row; a rerun replaces that row and keeps the
others, so the table is complete after a full run whatever order the notebooks ran in.
Columns: finding, paper (the paper's figure, as text), run (this run's estimate), ci_low, ci_high,
agrees (does this run reproduce the paper's direction; empty when it cannot say).

    write_finding("runs/default", "IFL exists (§3)", "-0.06 to -0.14", -0.3, -0.4, -0.2, True)
    read_findings("runs/default")

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> _ = write_finding(d, "IFL exists (§3)", "-0.06 to -0.14", -0.31, -0.4, -0.22, True)
>>> _ = write_finding(d, "VE: DINOv2 instead of CLIP", "zh -0.20, de -0.11", 0.01, -0.05, 0.07, None)
>>> _ = write_finding(d, "IFL exists (§3)", "-0.06 to -0.14", -0.2, -0.3, -0.1, True)
>>> read_findings(d)[["finding", "run", "agrees"]].values.tolist()
[['IFL exists (§3)', -0.2, True], ['VE: DINOv2 instead of CLIP', 0.01, None]]
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

FILE = "findings.csv"
COLUMNS = ["finding", "paper", "run", "ci_low", "ci_high", "agrees"]


def _agrees(value) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"agrees must be True, False or empty, got {value!r}")
        return value.lower() == "true"
    return bool(value)


def read_findings(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The run's findings table (empty, with the columns, if none was written yet)."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    table = pd.read_csv(path, dtype={"finding": str, "paper": str}, keep_default_na=False,
                        na_values={"run": [""], "ci_low": [""], "ci_high": [""]})
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {COLUMNS}")
    table["agrees"] = table["agrees"].map(_agrees).astype(object)
    return table[COLUMNS]


def write_finding(run_dir: str | os.PathLike, finding: str, paper: str, run: float | str | None,
                  ci_low: float | None, ci_high: float | None, agrees: bool | None) -> Path:
    """Add or replace the row of `finding` in run_dir/findings.csv (atomic write); returns the path.
    ci_low <= ci_high is checked when both are given."""
    if not finding:
        raise ValueError("write_finding: finding must be a non-empty name")
    if ci_low is not None and ci_high is not None and ci_low > ci_high:
        raise ValueError(f"write_finding({finding!r}): ci_low {ci_low} > ci_high {ci_high}")
    table = read_findings(run_dir)
    row = {"finding": finding, "paper": paper, "run": run, "ci_low": ci_low, "ci_high": ci_high,
           "agrees": _agrees(agrees)}
    if (table["finding"] == finding).any():
        idx = table.index[table["finding"] == finding][0]
        for key, value in row.items():
            table.at[idx, key] = value
    else:
        table = pd.concat([table, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True)
    path = Path(run_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    table.assign(agrees=table["agrees"].map(lambda a: "" if a is None else str(a))).to_csv(tmp, index=False)
    os.replace(tmp, path)   # never half a table
    return path
