"""The runner: notebook selection, prerequisites, failure propagation, rendered companion.

Uses throwaway notebooks in a temporary project folder, executed for real by papermill."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ifl import runner

REPO = Path(__file__).resolve().parents[1]

GOOD = '''
# %% tags=["parameters"]
run_name = "x"
output_root = "."
# %%
from ifl.stage import open_stage
stage = open_stage("01_translate_data", output_root=output_root, run_name=run_name)
stage.path("tasks.txt").write_text("seed=%d" % seed)
stage.finish("wrote one file", files=1)
'''
BAD = '''
# %% tags=["parameters"]
run_name = "x"
output_root = "."
# %%
from ifl.stage import open_stage
stage = open_stage("02_train_variants", output_root=output_root, run_name=run_name)
stage.require("01_translate_data", "tasks.txt")
# %%
raise RuntimeError("boom in the second cell")
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks/01_translate_data.py").write_text(GOOD)
    (tmp_path / "notebooks/02_train_variants.py").write_text(BAD)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"common": {"run_name": "t", "seed": 4}}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_only_and_from_select_notebooks_by_number_and_reject_unknown_numbers():
    names = ["01_translate_data", "02_train_variants", "03_collect_responses"]
    assert runner.select_notebooks(names, only="3,1", start=None) == [names[0], names[2]]
    assert runner.select_notebooks(names, only=None, start="02") == names[1:]
    with pytest.raises(runner.ParamsError, match="no notebook numbered 07"):
        runner.select_notebooks(names, only="07", start=None)


def test_failure_propagates_and_keeps_earlier_outputs(project, capsys):
    status = runner.main(["p.yaml"])
    err = capsys.readouterr().err
    assert status == 1
    assert "02_train_variants FAILED" in err and "boom in the second cell" in err
    assert 'raise RuntimeError("boom in the second cell")' in err  # the failing cell's source
    assert (project / "rendered/t/02_train_variants.ipynb").exists()
    assert (project / "rendered/t/02_train_variants.html").exists()
    # notebook 01 finished and stays finished
    assert (project / "runs/t/01_translate_data/tasks.txt").read_text() == "seed=4"
    assert (project / "runs/t/01_translate_data/stage.json").exists()
    index = (project / "rendered/t/index.html").read_text()
    assert "wrote one file" in index and "failed: see the notebook" in index
    assert "seed: 4" in (project / "runs/t/params.yaml").read_text()
    log = (project / "runs/t/logs/02_train_variants.log").read_text()
    assert "boom in the second cell" in log


def test_only_runs_the_selected_notebook_and_overrides_reach_it(project):
    assert runner.main(["p.yaml", "--only", "01", "-p", "common.seed=9"]) == 0
    assert (project / "runs/t/01_translate_data/tasks.txt").read_text() == "seed=9"
    assert not (project / "rendered/t/02_train_variants.ipynb").exists()


def test_missing_prerequisite_names_the_notebook_to_run_first(project, capsys):
    assert runner.main(["p.yaml", "--only", "02"]) == 2
    err = capsys.readouterr().err
    assert "02_train_variants needs the outputs of 01_translate_data" in err
    assert "--only 01" in err
    assert not (project / "rendered/t").exists()  # stopped before any work


def test_run_all_rejects_an_unknown_section_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("common: {}\n01_tranlsate_data: {}\n")
    out = subprocess.run([str(REPO / "run_all.sh"), str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown section '01_tranlsate_data'" in out.stderr and str(bad) in out.stderr


def test_run_all_help():
    out = subprocess.run([str(REPO / "run_all.sh"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--only" in out.stdout and "--from" in out.stdout
