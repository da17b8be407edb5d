"""One task schema for both worlds (paper benchmarks and the miniature).

A task is one query in one language. Parallel tasks (the same item in several languages) share
`parallel_id`. `description` is the text that replaces the image in the text-only condition;
`description_lang` says which language it is in (it need not be the query's: see DESIGN).
`image` holds encoded image bytes (PNG/JPEG), or None for text-only benchmarks such as MultiQ,
so a saved task table is self-contained and nothing is re-downloaded.

>>> df = tasks_frame([dict(task_id="maxm-en-1", parallel_id="maxm-1", benchmark="maxm", lang="en",
...                        question="What is it?", image=None, description="A dog.",
...                        description_lang="en", reference="dog")])
>>> list(df.columns)[:4]
['task_id', 'parallel_id', 'benchmark', 'lang']
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ifl.data.languages import LANGUAGES
from ifl.stage import atomic_path

# column -> arrow type; order is the on-disk order. `extra` columns (e.g. category, image_id)
# may follow and are kept as they are.
TASK_SCHEMA = pa.schema([
    ("task_id", pa.string()),
    ("parallel_id", pa.string()),
    ("benchmark", pa.string()),
    ("lang", pa.string()),
    ("question", pa.string()),
    ("image", pa.binary()),
    ("description", pa.string()),
    ("description_lang", pa.string()),
    ("reference", pa.string()),
])
TASK_COLUMNS = tuple(TASK_SCHEMA.names)
_REQUIRED_TEXT = ("task_id", "parallel_id", "benchmark", "lang", "question")


class TaskSchemaError(ValueError):
    """A task table breaks the schema; the message names the source, column and row."""


def tasks_frame(rows: list[dict] | pd.DataFrame, *, source: str = "tasks") -> pd.DataFrame:
    """Build a validated task DataFrame (required columns first, extras after)."""
    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows.copy()
    for column in TASK_COLUMNS:
        if column not in df.columns:
            if column in _REQUIRED_TEXT:
                raise TaskSchemaError(f"{source}: missing column {column!r}")
            df[column] = None
    validate_tasks(df, source=source)
    extras = [c for c in df.columns if c not in TASK_COLUMNS]
    return df[list(TASK_COLUMNS) + extras].reset_index(drop=True)


def validate_tasks(df: pd.DataFrame, *, source: str = "tasks") -> None:
    """Raise TaskSchemaError naming the first bad row: empty ids/questions, unknown language,
    duplicate task_id."""
    for column in _REQUIRED_TEXT:
        bad = df[column].isna() | (df[column].astype(str).str.strip() == "")
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise TaskSchemaError(f"{source}: row {row} has an empty {column!r}")
    unknown = ~df["lang"].isin(LANGUAGES)
    if unknown.any():
        row = int(unknown.to_numpy().nonzero()[0][0])
        raise TaskSchemaError(f"{source}: row {row} has unknown language {df['lang'].iloc[row]!r}")
    dup = df["task_id"].duplicated()
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise TaskSchemaError(f"{source}: row {row} repeats task_id {df['task_id'].iloc[row]!r}")


def write_tasks(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    df = tasks_frame(df, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = [pa.field(n, TASK_SCHEMA.field(n).type) if n in TASK_COLUMNS else table.schema.field(n)
              for n in table.schema.names]
    with atomic_path(path) as tmp:
        pq.write_table(table.cast(pa.schema(fields)), tmp)
    return path


def read_tasks(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a task parquet written by `write_tasks`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no task table at {path}")
    return tasks_frame(pd.read_parquet(path), source=str(path))
