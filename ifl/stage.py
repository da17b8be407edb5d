"""Where a notebook reads and writes: one `Stage` per notebook, called from inside it.

Layout under `output_root`:
    runs/<run>/<NN_name>/            numbers and data of that stage, plus `stage.json` when done
    runs/<run>/logs/<NN_name>.log    cell outputs, as they ran
    runs/<run>/responses/            the response store notebooks 03 and 07 add parts to (resumable)
    paper_figures/<run>/             figures as PNG and PDF
    rendered/<run>/                  executed notebooks (.ipynb, .html) and index.html

A stage is finished when its `stage.json` exists (written last, atomically), so a later notebook
can be run alone from saved outputs, and a missing prerequisite names the notebook to run first.

>>> st = open_stage("01_translate_data", output_root="/tmp/ifl-doc", run_name="demo")
>>> st.dir.as_posix()
'/tmp/ifl-doc/runs/demo/01_translate_data'
"""
from __future__ import annotations

import csv
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

STAGE_FILE = "stage.json"
RESPONSE_STORE = "responses"  # runs/<run>/responses/, shared by notebooks 03 and 07
TABLE_WRITERS = {".csv": "to_csv", ".parquet": "to_parquet"}  # suffix -> pandas writer


def pipeline() -> list[dict[str, str]]:
    """The seven stages of the paper as a table (ifl/pipeline.csv): number, name, title, ..."""
    return _read_table("pipeline.csv")


def artifacts() -> list[dict[str, str]]:
    """What each stage writes, declared once (ifl/artifacts.csv): stage (number), artifact,
    file (inside the stage's folder), read_by (numbers of the stages that need it), what."""
    return _read_table("artifacts.csv")


def stage_name(number: str) -> str:
    """'04' -> '04_score_languages'."""
    names = {row["number"]: row["name"] for row in pipeline()}
    if number not in names:
        raise KeyError(f"no stage numbered {number!r} in ifl/pipeline.csv (have {', '.join(names)})")
    return names[number]


def prerequisites(name: str) -> list[str]:
    """The stages whose outputs stage `name` reads (from ifl/artifacts.csv), in pipeline order.

    >>> prerequisites("07_steering")
    ['01_translate_data', '02_train_variants', '03_collect_responses', '04_score_languages']
    """
    number = name.split("_", 1)[0]
    needed = {row["stage"] for row in artifacts() if number in row["read_by"].split()}
    return [row["name"] for row in pipeline() if row["number"] in needed]


def outputs(name: str) -> dict[str, str]:
    """{artifact: file} that stage `name` declares."""
    number = name.split("_", 1)[0]
    return {row["artifact"]: row["file"] for row in artifacts() if row["stage"] == number}


def _read_table(filename: str) -> list[dict[str, str]]:
    text = resources.files("ifl").joinpath(filename).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _artifact(name: str) -> dict[str, str]:
    rows = [row for row in artifacts() if row["artifact"] == name]
    if len(rows) != 1:
        raise KeyError(f"artifact {name!r} is declared {len(rows)} times in ifl/artifacts.csv "
                       f"(known: {', '.join(row['artifact'] for row in artifacts())})")
    return rows[0]


class MissingStageError(RuntimeError):
    """An earlier stage's outputs are missing; the message says which notebook to run."""


@dataclass(frozen=True)
class Stage:
    name: str
    output_root: Path
    run_name: str

    @property
    def run_dir(self) -> Path:
        return self.output_root / "runs" / self.run_name

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def figure_dir(self) -> Path:
        return self.output_root / "paper_figures" / self.run_name

    @property
    def response_store(self) -> Path:
        """`runs/<run>/responses/`: responses stored part by part as they are generated, one
        folder per model (notebook 03) or steered setting (notebook 07), so a killed run resumes.
        A working store, not an artifact: no stage reads it (docs/design.md)."""
        return self.run_dir / RESPONSE_STORE

    def path(self, *parts: str) -> Path:
        """A path inside this stage's folder; parent folders are created."""
        target = self.dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def require(self, stage_name: str, *files: str) -> Path:
        """The folder of finished stage `stage_name`; raise naming the notebook to run if absent."""
        folder = self.run_dir / stage_name
        needed = [STAGE_FILE, *files]
        missing = [f for f in needed if not (folder / f).exists()]
        if missing:
            number = stage_name.split("_", 1)[0]
            raise MissingStageError(
                f"{self.name} needs the outputs of notebook {stage_name} "
                f"({folder / missing[0]} is missing). Run it first: "
                f"./run_all.sh <params> --only {number}")
        return folder

    def input(self, artifact: str) -> Path:
        """The file of an earlier stage's `artifact` (ifl/artifacts.csv), which must list this
        stage among its readers; raise naming the notebook to run if it is not there."""
        row = _artifact(artifact)
        number = self.name.split("_", 1)[0]
        if number not in row["read_by"].split():
            raise KeyError(f"{self.name} reads {artifact!r}, but ifl/artifacts.csv does not list "
                           f"{number} among its readers: declare it there")
        return self.require(stage_name(row["stage"]), row["file"]) / row["file"]

    def optional_input(self, artifact: str) -> Path | None:
        """Like `input`, but None when that stage has not run (e.g. no variants in a run of
        off-the-shelf models only)."""
        try:
            return self.input(artifact)
        except MissingStageError:
            return None

    def output(self, artifact: str) -> Path:
        """Where this stage writes its declared `artifact` (parent folders created)."""
        row = _artifact(artifact)
        if stage_name(row["stage"]) != self.name:
            raise KeyError(f"{artifact!r} is an output of stage {row['stage']}, not of {self.name} "
                           "(ifl/artifacts.csv)")
        return self.path(row["file"])

    def write_table(self, table: Any, artifact: str, *, index: bool = False) -> Path:
        """Write a pandas table as this stage's declared `artifact`, CSV or parquet by the file's
        suffix, atomically (`write_table_atomic`); `index=True` keeps a meaningful index."""
        return write_table_atomic(table, self.output(artifact), index=index)

    def save_figure(self, fig: Any, name: str) -> tuple[Path, Path]:
        """Save a matplotlib figure as `paper_figures/<run>/<name>.png` and `.pdf`, each
        atomically: a full disk leaves the previous file or none, never a partial one."""
        self.figure_dir.mkdir(parents=True, exist_ok=True)
        png, pdf = self.figure_dir / f"{name}.png", self.figure_dir / f"{name}.pdf"
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
        with atomic_path(pdf) as tmp:
            fig.savefig(tmp, format="pdf", bbox_inches="tight")
        return png, pdf

    def finish(self, headline: str, **metrics: Any) -> Path:
        """Mark the stage done: `stage.json` with a one-line headline result and key numbers."""
        record = {"stage": self.name, "headline": headline, "metrics": metrics,
                  "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        return write_json_atomic(self.path(STAGE_FILE), record)


def open_stage(name: str, *, output_root: str | os.PathLike, run_name: str) -> Stage:
    """The Stage of notebook `name`; creates its folder. A restarted stage loses its done-mark."""
    stage = Stage(name, Path(output_root), run_name)
    stage.dir.mkdir(parents=True, exist_ok=True)
    (stage.dir / STAGE_FILE).unlink(missing_ok=True)
    return stage


def read_stage_record(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The `stage.json` of a finished stage, or None."""
    path = run_dir / name / STAGE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the body succeeds,
    removed when it fails. An OSError (disk full, read-only) is raised again naming `path`,
    the file the user knows, not the temporary one.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("whole")
    >>> target.read_text()
    'whole'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> Path:
    """Write JSON via a temp file and rename, so readers never see half a file."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str))


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 text via a temp file and rename (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_table_atomic(table: Any, path: str | os.PathLike, *, index: bool = False) -> Path:
    """Write a pandas table to `path` as CSV or parquet (by its suffix) via a temporary file and
    rename: a full disk leaves the previous file or none, and the error names `path`.

    >>> import tempfile, pandas as pd
    >>> out = write_table_atomic(pd.DataFrame({"a": [1]}), Path(tempfile.mkdtemp()) / "t.csv")
    >>> out.read_text()
    'a\\n1\\n'
    """
    path = Path(path)
    writer = TABLE_WRITERS.get(path.suffix)
    if writer is None:
        raise ValueError(f"cannot write a table to {path}: write {' or '.join(TABLE_WRITERS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        getattr(table, writer)(tmp, index=index)
    return path
