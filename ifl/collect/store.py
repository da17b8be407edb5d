"""Where collected responses live on disk, and how shards split the work.

Layout under `out_dir` (one folder per model; `/` in a model name becomes `--`):

    <model>/part-00000.parquet, part-00001.parquet, ...        an unsharded run
    <model>/shard-001-of-003/part-00000.parquet, ...           shard 1 of 3 (one process each)
    <model>/.../settings.json                                   the generation settings of those parts
    <model>/responses.parquet                                   `merge_shards`' single file

A part is written to a temporary name and renamed, so a reader sees whole parts or nothing: a
process killed at any moment (SIGINT, SIGKILL, OOM-killer) leaves only complete rows behind, and
a rerun skips every (task_id, condition) already in a part. Rows: one per (model, task_id,
condition), columns `COLUMNS`.

A part that cannot be read (a truncated or corrupted file, e.g. copied from a full disk or
half-synced between machines: "Parquet magic bytes not found") is set aside as
`<part>.unreadable` with a warning naming it, and its rows, then missing, are collected again
by the next run: a part holds nothing that cannot be regenerated.

Shards: a task belongs to shard `shard_of(task_id, n)`, a hash of its id (not its position),
so every process agrees without talking, and adding or reordering tasks moves none.

>>> shard_of("maxm-en-1", 1)
0
>>> sorted({shard_of(f"t{i}", 3) for i in range(20)})
[0, 1, 2]
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ifl.stage import write_json_atomic

KEY = ["task_id", "condition"]
# what a rerun must reproduce exactly (greedy decoding); `seconds` and `batch_size` are timings
CONTENT = ["model", "task_id", "condition", "prompt", "response", "n_prompt_tokens", "n_new_tokens"]
COLUMNS = CONTENT + ["seconds", "batch_size"]
SCHEMA = pa.schema([("model", pa.string()), ("task_id", pa.string()), ("condition", pa.string()),
                    ("prompt", pa.string()), ("response", pa.string()),
                    ("n_prompt_tokens", pa.int64()), ("n_new_tokens", pa.int64()),
                    ("seconds", pa.float64()), ("batch_size", pa.int64())])
SETTINGS_FILE = "settings.json"
MERGED_FILE = "responses.parquet"


class ResponseConflictError(RuntimeError):
    """Stored responses disagree with each other or with the requested settings."""


def shard_of(task_id: str, n: int) -> int:
    """The shard (0..n-1) of a task: sha1 of its id, stable across processes and Python runs
    (the built-in `hash` of a str is salted per process)."""
    return int.from_bytes(hashlib.sha1(task_id.encode("utf-8")).digest()[:8], "big") % n


def default_shard() -> tuple[int, int]:
    """(rank, world size) of this process: accelerate's PartialState under `accelerate launch`,
    else the RANK/WORLD_SIZE that launchers (torchrun too) set, else (0, 1). The environment is
    the fallback because PartialState reports one process when it cannot set up the group it
    expects (seen: torchrun of 2 CPU processes -> PartialState says 0 of 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return (0, 1)
    try:
        from accelerate import PartialState

        state = PartialState()
        if state.num_processes == world:
            return (state.process_index, state.num_processes)
    except ImportError:
        pass
    return (int(os.environ["RANK"]), world)


def model_dir(out_dir: str | os.PathLike, model_name: str) -> Path:
    return Path(out_dir) / model_name.replace("/", "--")


def shard_dir(out_dir: str | os.PathLike, model_name: str, shard: tuple[int, int]) -> Path:
    i, n = shard
    base = model_dir(out_dir, model_name)
    return base if n == 1 else base / f"shard-{i:03d}-of-{n:03d}"


class PartWriter:
    """Appends rows to one folder as numbered parquet parts, each atomically (temp + rename).
    One writer per folder at a time: a shard is one process."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".part-*.tmp"):  # left by a killed writer: never a whole part
            stale.unlink(missing_ok=True)
        numbers = [int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")]
        self.next = max(numbers, default=-1) + 1

    def write(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        path = self.folder / f"part-{self.next:05d}.parquet"
        tmp = self.folder / f".{path.name}.tmp"
        table = pa.Table.from_pandas(pd.DataFrame(rows, columns=COLUMNS), schema=SCHEMA,
                                     preserve_index=False)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the rename below must never publish unflushed bytes
        self.next += 1  # before the rename: an interrupted rename leaves a gap, never a reuse
        os.replace(tmp, path)
        return path


def read_parts(out_dir: str | os.PathLike, model_name: str) -> pd.DataFrame:
    """Every stored row of a model, from all shards, as written (duplicates kept), plus `part`."""
    parts = sorted(model_dir(out_dir, model_name).rglob("part-*.parquet"))
    frames = [frame.assign(part=str(p)) for p in parts if (frame := _read_part(p)) is not None]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t.to_pandas_dtype()) for c, t in
                             zip(SCHEMA.names, SCHEMA.types)}).assign(part=pd.Series(dtype=str))
    return pd.concat(frames, ignore_index=True)


def _read_part(path: Path) -> pd.DataFrame | None:
    """A part's rows, or None after setting an unreadable part aside (its rows are collected
    again: the caller sees them as missing)."""
    try:
        return pd.read_parquet(path)
    except (FileNotFoundError, PermissionError):
        raise
    except (pa.ArrowInvalid, OSError) as exc:  # truncated or corrupted bytes
        aside = path.with_name(f"{path.name}.unreadable")
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{path.name}.unreadable-{n}")
        os.replace(path, aside)
        warnings.warn(f"{path} is unreadable ({' '.join(str(exc).split())[:120]}); set aside as "
                      f"{aside.name}, and its rows will be collected again", stacklevel=3)
        return None


def load_responses(out_dir: str | os.PathLike, model_name: str) -> pd.DataFrame:
    """All responses of a model (every shard), one row per (task_id, condition), sorted by them.

    Parts never overlap in normal operation; if two do (e.g. the same shard run twice at once),
    identical duplicates are dropped and disagreeing ones raise ResponseConflictError naming
    the part files."""
    raw = read_parts(out_dir, model_name)
    dup = raw.duplicated(KEY, keep=False)
    if dup.any():
        clash = raw[dup].groupby(KEY)[CONTENT].nunique(dropna=False).gt(1).any(axis=1)
        if clash.any():
            task_id, condition = clash[clash].index[0]
            files = raw.loc[(raw.task_id == task_id) & (raw.condition == condition), "part"]
            raise ResponseConflictError(
                f"{clash.sum()} (task_id, condition) pairs were stored twice with different "
                f"content, e.g. ({task_id!r}, {condition!r}) in {sorted(set(files))}. Were two "
                "runs with different settings pointed at the same folder? Delete the wrong part "
                "files (or the folder) and rerun.")
    out = raw.drop_duplicates(KEY).drop(columns="part")
    return out.sort_values(KEY).reset_index(drop=True)


def check_settings(folder: Path, model_root: Path, settings: dict) -> None:
    """Refuse to add rows made with other settings (template, token limits, steering) to
    stored ones; then record `settings` in `folder/settings.json`."""
    for path in sorted(model_root.rglob(SETTINGS_FILE)):
        stored = json.loads(path.read_text(encoding="utf-8"))
        diff = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if diff:
            raise ResponseConflictError(
                f"{path} records other settings than this run's ({diff}, as stored vs now). "
                f"Use another out_dir or model_name, or delete {model_root} to start over.")
    write_json_atomic(folder / SETTINGS_FILE, settings)


def merge_shards(out_dir: str | os.PathLike, model_name: str,
                 expected: pd.DataFrame | None = None) -> pd.DataFrame:
    """One table of all shards' rows, also written to `<model>/responses.parquet`.

    expected: rows with `task_id` and `condition` that must all be present (e.g. the pairs the
    run was asked for); a missing one raises, naming its shard so that shard can be rerun."""
    df = load_responses(out_dir, model_name)
    if expected is not None:
        have = set(zip(df.task_id, df.condition))
        missing = [(t, c) for t, c in zip(expected.task_id, expected.condition) if (t, c) not in have]
        if missing:
            folders = sorted({shard_dir(out_dir, model_name, (shard_of(t, n), n)).name
                              for t, _ in missing for n in _shard_counts(out_dir, model_name)})
            raise FileNotFoundError(
                f"{len(missing)} responses missing for {model_name}, e.g. {missing[0]}; rerun "
                f"collect_responses for the shards that own them (folders {folders}).")
    path = model_dir(out_dir, model_name) / MERGED_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False), tmp)
    os.replace(tmp, path)
    return df


def _shard_counts(out_dir, model_name) -> set[int]:
    """The shard counts n seen on disk (1 for an unsharded run)."""
    root = model_dir(out_dir, model_name)
    counts = {int(p.name.rsplit("-", 1)[1]) for p in root.glob("shard-*-of-*") if p.is_dir()}
    return counts or {1}
