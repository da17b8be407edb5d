"""Notebooks 03 and 07 with `processes: 2` (two CPU ranks through `accelerate launch`) give the
rows of `processes: 1`; a 2-process run that lost a rank's work resumes to the same rows.

One small default run with a single variant (vicuna-clip-en) so that each notebook launches
once; three launches in all (~35 s each on a busy 2-core machine), hence `slow`."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import SMALL, run
from ifl.collect.store import CONTENT, MERGED_FILE

pytestmark = pytest.mark.slow

VARIANT = "vicuna-clip-en"
ONE_VARIANT = [f"-p{o}" for o in ("02_train_variants.llms=[vicuna]", "02_train_variants.visions=[clip]",
                                  "02_train_variants.data_languages=[en]",
                                  "03_collect_responses.threads=1", "07_steering.threads=1",
                                  f"07_steering.models=[{VARIANT}]", "07_steering.steer_languages=[de]",
                                  "07_steering.sweep_depths=[]",
                                  # the probes are the default run's test, not the launcher's
                                  "02_train_variants.mini_component_probes=false")]


def notebook(root: Path, only: str, *extra: str) -> None:
    assert run("params/default.yaml", root, *SMALL, *ONE_VARIANT, "--only", only, *extra) == 0


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "runs", dst / "runs")
    return dst


def rows(path: Path, sort: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path)[CONTENT].sort_values(sort).reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Output root of a small default run whose notebooks 01-02 are done (one variant)."""
    root = tmp_path_factory.mktemp("processes")
    notebook(root, "01,02")
    return root


def test_03_two_processes_equal_one_and_resume(trained, tmp_path):
    two = copy_run(trained, tmp_path / "two")
    notebook(trained, "03")                                            # processes: 1
    notebook(two, "03", "-p", "03_collect_responses.processes=2")
    stage = Path("runs/default/03_collect_responses")
    one_rows = rows(trained / stage / "responses.parquet", ["model", "task_id", "condition"])
    two_rows = rows(two / stage / "responses.parquet", ["model", "task_id", "condition"])
    assert len(one_rows) and set(one_rows["model"]) == {VARIANT}
    pd.testing.assert_frame_equal(two_rows, one_rows)
    store = two / "runs/default/responses" / VARIANT
    assert {p.name for p in store.glob("shard-*")} == {"shard-000-of-002", "shard-001-of-002"}

    # a run killed before rank 1 stored anything and before the merge: the rerun does only that
    n1 = sum(len(pd.read_parquet(p)) for p in (store / "shard-001-of-002").glob("part-*.parquet"))
    shutil.rmtree(store / "shard-001-of-002")
    (store / MERGED_FILE).unlink()
    logs = {r: store / "launch" / f"rank-{r}.log" for r in (0, 1)}
    before = {r: len(log.read_text()) for r, log in logs.items()}  # the logs are appended to
    notebook(two, "03", "-p", "03_collect_responses.processes=2")
    pd.testing.assert_frame_equal(rows(two / stage / "responses.parquet",
                                       ["model", "task_id", "condition"]), one_rows)
    rerun = {r: log.read_text()[before[r]:] for r, log in logs.items()}
    assert n1 and f"shard 1/2: {n1} of {n1} completions to do" in rerun[1]
    assert "shard 0/2: 0 of" in rerun[0]


def test_07_two_processes_equal_one(trained, tmp_path):
    if not (trained / "runs/default/03_collect_responses/responses.parquet").exists():
        notebook(trained, "03")
    notebook(trained, "04")
    two = copy_run(trained, tmp_path / "two")
    notebook(trained, "07")
    notebook(two, "07", "-p", "07_steering.processes=2")
    sort = ["model", "task_id", "condition"]
    one_rows = rows(trained / "runs/default/07_steering/steered_scored.parquet", sort)
    two_rows = rows(two / "runs/default/07_steering/steered_scored.parquet", sort)
    assert len(one_rows) and set(one_rows["condition"]) == {"image"}
    pd.testing.assert_frame_equal(two_rows, one_rows)
    steered = [p for p in (two / "runs/default/responses").iterdir() if "+steer-de-" in p.name]
    assert len(steered) == 1 and (steered[0] / "launch" / "rank-1.log").exists()
