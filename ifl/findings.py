"""The findings table of a run: runs/<run>/findings.csv, one row per finding of the paper.

Each notebook that measures a finding writes its row; a rerun replaces that row and keeps the
others, so the table is complete after a full run whatever order the notebooks ran in.
Columns: finding, paper (the paper's figure, as text), run (this run's estimate), ci_low, ci_high,
agrees (does this run reproduce the paper's direction; empty when it cannot say), and an optional
note (what exactly was measured, or why a cell was not estimated): the finding's name stays the
same from run to run, so a rerun replaces its row, and the particulars go in the note.

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

from ifl.stage import atomic_path

FILE = "findings.csv"
COLUMNS = ["finding", "paper", "run", "ci_low", "ci_high", "agrees"]
OPTIONAL = ["note"]  # absent from tables written before it existed


def agrees_with(paper: float, estimate: float | None, ci_low: float | None, ci_high: float | None) -> bool:
    """Does an estimate reproduce the paper's direction: the same sign as `paper`, with its
    interval excluding 0 (so on the paper's side). A missing estimate does not.

    >>> agrees_with(-0.1, -0.3, -0.4, -0.2), agrees_with(-0.1, -0.3, -0.4, 0.01), agrees_with(0.17, -0.2, -0.3, -0.1)
    (True, False, False)
    >>> agrees_with(0.17, None, None, None)
    False
    """
    values = [paper, estimate, ci_low, ci_high]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return False
    if paper > 0:
        return bool(estimate > 0 and ci_low > 0)
    if paper < 0:
        return bool(estimate < 0 and ci_high < 0)
    return False  # the paper found no effect: nothing to share a sign with


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
    for column in OPTIONAL:
        if column not in table.columns:
            table[column] = ""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {COLUMNS}")
    table["agrees"] = table["agrees"].map(_agrees).astype(object)
    return table[COLUMNS + OPTIONAL]


def write_finding(run_dir: str | os.PathLike, finding: str, paper: str, run: float | str | None,
                  ci_low: float | None, ci_high: float | None, agrees: bool | None,
                  note: str = "") -> Path:
    """Add or replace the row of `finding` in run_dir/findings.csv (atomic write); returns the path.
    ci_low <= ci_high is checked when both are given."""
    if not finding:
        raise ValueError("write_finding: finding must be a non-empty name")
    if ci_low is not None and ci_high is not None and ci_low > ci_high:
        raise ValueError(f"write_finding({finding!r}): ci_low {ci_low} > ci_high {ci_high}")
    table = read_findings(run_dir)
    row = {"finding": finding, "paper": paper, "run": run, "ci_low": ci_low, "ci_high": ci_high,
           "agrees": _agrees(agrees), "note": note or ""}
    if (table["finding"] == finding).any():
        idx = table.index[table["finding"] == finding][0]
        for key, value in row.items():
            table.at[idx, key] = value
    else:
        table = pd.concat([table, pd.DataFrame([row], columns=COLUMNS + OPTIONAL)], ignore_index=True)
    path = Path(run_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # never half a table
        table.assign(agrees=table["agrees"].map(lambda a: "" if a is None else str(a))).to_csv(tmp, index=False)
    return path
