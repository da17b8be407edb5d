"""The runner: notebook selection, prerequisites, failure propagation, rendered companion.

Uses throwaway notebooks in a temporary project folder, executed for real by papermill."""
import re
import subprocess
import sys
import textwrap
import time
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


FULL_DISK = '''
# %% tags=["parameters"]
run_name = "x"
output_root = "."
# %%
import errno
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from ifl.stage import open_stage

def full_disk(self, fname, **kw):  # the disk fills up halfway through the PNG
    with open(fname, "wb") as f:
        f.write(b"\\x89PNG partial")
    raise OSError(errno.ENOSPC, "No space left on device", str(fname))

Figure.savefig = full_disk
stage = open_stage("02_train_variants", output_root=output_root, run_name=run_name)
fig, ax = plt.subplots()
stage.save_figure(fig, "02_figure")
'''
FULL_DISK_TABLE = '''
# %% tags=["parameters"]
run_name = "x"
output_root = "."
# %%
import errno
import pandas as pd
from ifl.stage import open_stage

def full_disk(self, path, **kw):  # the disk fills up halfway through the table
    with open(path, "w") as f:
        f.write("name,llm\\nvicuna-cl")
    raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write(): names no file

pd.DataFrame.to_csv = full_disk
stage = open_stage("02_train_variants", output_root=output_root, run_name=run_name)
stage.write_table(pd.DataFrame({"name": ["vicuna-clip-en"], "llm": ["vicuna"]}), "variants")
'''
FULL_DISK_UNNAMED = '''
# %% tags=["parameters"]
run_name = "x"
output_root = "."
# %%
import errno
from pathlib import Path
from ifl.stage import open_stage

def full_disk(self, data, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")

Path.write_text = full_disk
stage = open_stage("02_train_variants", output_root=output_root, run_name=run_name)
stage.path("notes.txt").write_text("a write outside the stage's helpers")
'''
SLOW = '''
# %% tags=["parameters"]
run_name = "x"
output_root = "."
# %%
import time
from ifl.stage import open_stage
stage = open_stage("02_train_variants", output_root=output_root, run_name=run_name)
stage.path("started.txt").write_text("yes")
time.sleep(120)
'''


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write in (root ignores modes: then sysfs, which refuses)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("")
    except OSError:
        return ro
    (ro / "probe").unlink()
    if Path("/sys/kernel").is_dir():  # sysfs: no new folders, whoever asks
        return Path("/sys/ifl-test-output-root")
    pytest.skip("no unwritable folder available")


def test_read_only_output_root_exits_2_before_work(project, capsys):
    root = _unwritable(project)
    status = runner.main(["p.yaml", "-p", f"common.output_root={root}"])
    err = capsys.readouterr().err
    assert status == 2
    assert "common.output_root" in err and "cannot write" in err and "Traceback" not in err
    assert not (project / "rendered").exists() and "running" not in err


def test_disk_full_while_saving_a_figure_leaves_no_partial_file(project, capsys):
    (project / "notebooks/02_train_variants.py").write_text(FULL_DISK)
    assert runner.main(["p.yaml"]) == 1
    err = capsys.readouterr().err
    figures = project / "paper_figures/t"
    assert list(figures.iterdir()) == []  # neither the PNG nor its temporary file
    line = [l for l in err.splitlines() if "02_train_variants FAILED" in l]
    assert line and "No space left on device writing paper_figures/t/02_figure.png" in line[0], err
    assert "Traceback" not in err and "import errno" not in err  # one line, no cell dump
    index = (project / "rendered/t/index.html").read_text()
    assert "wrote one file" in index  # the companion, for what finished


def test_disk_full_while_writing_a_table_leaves_no_partial_file_and_names_it(project, capsys):
    (project / "notebooks/02_train_variants.py").write_text(FULL_DISK_TABLE)
    assert runner.main(["p.yaml"]) == 1
    err = capsys.readouterr().err
    stage_dir = project / "runs/t/02_train_variants"
    assert sorted(p.name for p in stage_dir.iterdir()) == ["params.yaml"]  # no table, no temp file
    line = [l for l in err.splitlines() if "02_train_variants FAILED" in l]
    assert line and "No space left on device writing runs/t/02_train_variants/variants.csv" in line[0], err
    assert "Traceback" not in err and "import errno" not in err


def test_disk_full_on_a_write_that_names_no_file_is_one_line_naming_the_cell_line(project, capsys):
    (project / "notebooks/02_train_variants.py").write_text(FULL_DISK_UNNAMED)
    assert runner.main(["p.yaml"]) == 1
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if "02_train_variants FAILED" in l]
    assert line and ("No space left on device writing a file the error does not name, in "
                     '`stage.path("notes.txt").write_text(') in line[0], err
    assert "Traceback" not in err and "import errno" not in err


def test_a_failed_table_write_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch):
    import errno

    import pandas as pd

    from ifl.stage import open_stage, write_table_atomic
    stage = open_stage("03_collect_responses", output_root=tmp_path, run_name="r")
    target = stage.write_table(pd.DataFrame({"a": [1]}), "responses")
    before = target.read_bytes()

    def full_disk(self, path, **kw):  # half a parquet file, then the disk is full
        Path(path).write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(OSError) as err:
        stage.write_table(pd.DataFrame({"a": [2]}), "responses")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert target.read_bytes() == before  # the previous table, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["responses.parquet"]
    with pytest.raises(ValueError, match=r"cannot write a table to .*t\.json: write \.csv or \.parquet"):
        write_table_atomic(pd.DataFrame({"a": [1]}), tmp_path / "t.json")


@pytest.mark.parametrize("evalue, expected", [
    ("[Errno 28] No space left on device: '/r/x.csv'", "No space left on device writing /r/x.csv"),
    ('[Errno 30] Read-only file system: "/r/it\'s.csv"', "Read-only file system writing /r/it's.csv"),
    ("Error writing bytes to file. Detail: [errno 28] No space left on device",
     "No space left on device writing a file the error does not name (see the log)"),
    ("[Errno 2] No such file or directory: 'x.csv'", None),  # not a full disk: the usual report
    ("boom", None)])
def test_disk_full_is_told_by_errno(evalue, expected):
    from types import SimpleNamespace
    assert runner._disk_full(SimpleNamespace(evalue=evalue, traceback=[])) == expected


@pytest.mark.parametrize("folder, says", [("t", "[ifl] run 't' not started: cannot write "),
                                          ("01_translate_data", "[ifl] 01_translate_data FAILED: cannot write ")])
def test_disk_full_on_the_runners_params_copy_is_one_line(project, capsys, monkeypatch, folder, says):
    import errno
    real_write_text = Path.write_text

    def full_disk(self, text, **kw):
        if self.name in ("params.yaml", ".params.yaml.tmp") and self.parent.name == folder:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, text, **kw)
    monkeypatch.setattr(Path, "write_text", full_disk)
    assert runner.main(["p.yaml", "--only", "01"]) == 1
    err = capsys.readouterr().err
    target = project / "runs/t" / ("" if folder == "t" else folder) / "params.yaml"
    assert f"{says}{target}: No space left on device" in err, err
    assert "Traceback" not in err and not target.exists()


def test_disk_full_in_the_runner_is_one_line_and_the_companion_is_written(project, capsys,
                                                                          monkeypatch):
    import errno

    import ifl.companion

    def full(ipynb):
        raise OSError(errno.ENOSPC, "No space left on device", str(ipynb.with_suffix(".html")))
    monkeypatch.setattr(ifl.companion, "export_html", full)
    assert runner.main(["p.yaml", "--only", "01"]) == 0  # the notebook itself finished
    err = capsys.readouterr().err
    assert "no HTML: cannot write" in err and "Traceback" not in err
    assert (project / "rendered/t/index.html").exists()


def test_ctrl_c_prints_one_line_with_the_resume_command(project):
    import os
    import signal
    (project / "notebooks/02_train_variants.py").write_text(SLOW)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    errors = project / "stderr.txt"
    with errors.open("w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "ifl.runner", "p.yaml", "-p", "common.seed=2"],
                                cwd=project, stderr=err_file, env=env, start_new_session=True)
        try:
            started = project / "runs/t/02_train_variants/started.txt"
            for _ in range(600):  # the kernel is in the sleeping cell
                if started.exists() or proc.poll() is not None:
                    break
                time.sleep(0.1)
            assert started.exists(), errors.read_text()
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
            assert proc.wait(timeout=60) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    err = errors.read_text()
    assert ("interrupted during 02_train_variants" in err
            and "resume with: ./run_all.sh p.yaml --from 02 -p common.seed=2" in err), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "zmq" not in err, err
    assert (project / "runs/t/01_translate_data/stage.json").exists()  # finished work kept
    assert not (project / "runs/t/.lock").exists()


def test_a_second_run_on_the_same_name_is_refused(project, capsys):
    import os

    from ifl.runlock import run_lock
    with run_lock(project / "runs/t"):  # this process stands in for a first, live run
        assert runner.main(["p.yaml", "--only", "01"]) == 2
    err = capsys.readouterr().err
    assert f"in use by another run: pid {os.getpid()}" in err and "started 20" in err
    assert not (project / "runs/t/01_translate_data").exists()  # no work done
    # a lock left by a killed run (its pid gone) is stale: the next run takes it over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (project / "runs/t/.lock").write_text(f'{{"pid": {dead.pid}, "started": "2024-01-01 00:00:00"}}')
    assert runner.main(["p.yaml", "--only", "01"]) == 0
    assert "removing a stale lock" in capsys.readouterr().err
    assert not (project / "runs/t/.lock").exists()


def test_missing_done_mark_is_named(project, capsys):
    (project / "runs/t/01_translate_data").mkdir(parents=True)
    (project / "runs/t/01_translate_data/tasks.txt").write_text("partial")
    assert runner.main(["p.yaml", "--from", "02"]) == 2
    err = capsys.readouterr().err
    assert f"{project / 'runs/t/01_translate_data/stage.json'} is missing" in err


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(REPO)
    return cache


def test_check_lists_missing_downloads_and_does_no_work(empty_hub_cache, tmp_path, capsys):
    out_root = tmp_path / "out"
    snap = empty_hub_cache / "models--llava-hf--llava-1.5-7b-hf"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs/main").write_text("abc123")
    (snap / "snapshots/abc123").mkdir(parents=True)
    (snap / "snapshots/abc123/config.json").write_text("{}")
    assert runner.main(["params/paper.yaml", "--check", "-p", f"common.output_root={out_root}"]) == 0
    out = capsys.readouterr().out
    assert "would run: 01_translate_data, 02_train_variants" in out
    assert "in cache  model llava-hf/llava-1.5-7b-hf@main" in out
    assert "MISSING   model llava-hf/bakLlava-v1-hf@main" in out and "hf download llava-hf/bakLlava-v1-hf" in out
    assert ("hf download floschne/maxm --repo-type dataset --revision "
            "169afacfb848a1a4dab6b2aaaa149841cd643961") in out
    assert "hf download cis-lmu/glotlid model_v3.bin --revision" in out
    assert "hf download facebook/nllb-200-distilled-1.3B" in out
    assert "MISSING   ./data/LLaVA-Pretrain/images" in out
    assert not out_root.exists()  # no work, not even the run folder


def test_check_on_paper_smoke_and_a_bad_key(empty_hub_cache, tmp_path, capsys):
    assert runner.main(["params/paper-smoke.yaml", "--check", "--only", "01,02",
                        "-p", f"common.output_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    # the stand-ins are built by make_smoke_assets: listed as such until an earlier test (or
    # run) has built them in this checkout, then as present
    assert re.search(r"(to build|present)\s+\./smoke_assets/models/tiny-vicuna", out), out
    assert runner.main(["params/paper.yaml", "--check", "-p", "03_collect_responses.batch_sise=3"]) == 2
    assert "unknown key (did you mean 'batch_size'?)" in capsys.readouterr().err


def test_check_on_paper_1gpu_lists_what_must_be_downloaded(empty_hub_cache, tmp_path, capsys):
    """The one-GPU route's pre-run check: valid offline, and every download it needs is listed,
    GlotLID included when only notebook 03 (its precision check, strict GlotLID) is selected."""
    out_root = tmp_path / "out"
    assert runner.main(["params/paper-1gpu.yaml", "--check", "-p", f"common.output_root={out_root}"]) == 0
    out = capsys.readouterr().out
    assert "would run: 01_translate_data, 02_train_variants, 03_collect_responses" in out
    for hub_id in ("lmsys/vicuna-7b-v1.5", "llava-hf/llava-1.5-13b-hf", "Intel/llava-gemma-2b",
                   "facebook/nllb-200-distilled-1.3B"):
        assert f"hf download {hub_id}" in out, hub_id
    assert "hf download cis-lmu/glotlid model_v3.bin --revision" in out
    assert "MISSING   ./data/LLaVA-Pretrain/images" in out
    assert not out_root.exists()
    from ifl.params import load_params
    from ifl.precheck import hub_needs
    params = load_params("params/paper-1gpu.yaml")
    needs, _ = hub_needs(params, ["03_collect_responses"])
    glotlid = [n for n in needs if n.repo_id == "cis-lmu/glotlid"]
    assert [n.used_by for n in glotlid] == ["03_collect_responses.precision_check_glotlid_source"]
    params.collect_responses.precision_check_identifier = "fallback"  # lid.176 ships on PyPI
    assert not [n for n in hub_needs(params, ["03_collect_responses"])[0] if n.repo_id == "cis-lmu/glotlid"]


@pytest.mark.parametrize("params", ["params/paper.yaml", "params/paper-1gpu.yaml"])
def test_run_all_check_exits_0_offline(tmp_path, params):
    out = subprocess.run([str(REPO / "run_all.sh"), params, "--check", "-p",
                          f"common.output_root={tmp_path / 'out'}"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "lmsys/vicuna-7b-v1.5" in out.stdout and not (tmp_path / "out").exists()


COLLECTOR = GOOD.replace('"01_translate_data"', '"03_collect_responses"')
NODE_1 = ["-p", "03_collect_responses.machines=2", "-p", "03_collect_responses.machine_rank=1",
          "-p", "03_collect_responses.main_address=node-a"]


def test_the_other_node_of_a_multi_node_collection_runs_beside_the_main_one(project, capsys):
    """Node 1 of `03_collect_responses.machines=2` runs on the run folder node 0 holds (its own
    lock, its rendered notebooks under rendered/<run>/machine-1/); an ordinary second run, or
    node 0 twice, is still refused; selected notebooks with different ranks are an error."""
    from ifl.runlock import run_lock

    (project / "notebooks/03_collect_responses.py").write_text(COLLECTOR)
    for done in ("01_translate_data", "02_train_variants"):  # its prerequisites, finished
        (project / "runs/t" / done).mkdir(parents=True)
        (project / "runs/t" / done / "stage.json").write_text("{}")
    with run_lock(project / "runs/t"):  # this process stands in for node 0, running
        assert runner.main(["p.yaml", "--only", "03", *NODE_1]) == 0, capsys.readouterr().err
        assert (project / "rendered/t/machine-1/03_collect_responses.ipynb").exists()
        assert not (project / "runs/t/.lock-machine-1").exists()  # released when done
        node_0 = [a.replace("machine_rank=1", "machine_rank=0") for a in NODE_1]
        assert runner.main(["p.yaml", "--only", "03", *node_0]) == 2
        assert "in use by another run" in capsys.readouterr().err
    (project / "notebooks/07_steering.py").write_text(COLLECTOR)
    (project / "runs/t/04_score_languages").mkdir(parents=True)
    (project / "runs/t/04_score_languages/stage.json").write_text("{}")
    assert runner.main(["p.yaml", "--only", "03,07", *NODE_1, "-p", "07_steering.machines=2",
                        "-p", "07_steering.main_address=node-a"]) == 2  # 07 at rank 0
    assert "different ranks (03_collect_responses.machine_rank=1, 07_steering.machine_rank=0)" \
        in capsys.readouterr().err
