"""The front door: the work's own progress reaches the runner's output; a closing summary.

The runner test executes a throwaway notebook for real (papermill, a fresh kernel) whose loop
reports progress, with output going to a file (not a terminal): progress lines must appear
while it runs, every `--progress-every` seconds."""
import io
import json
import re
import subprocess
import time

import pytest
import yaml

from ifl import progress, runner

SLOW = '''
# %% tags=["parameters"]
run_name = "x"
output_root = "."
# %%
import time
from ifl.progress import report
from ifl.stage import open_stage
stage = open_stage("01_translate_data", output_root=output_root, run_name=run_name)
for epoch in range(2):
    report("epochs", epoch, 2)
    for i in range(10):
        time.sleep(0.12)
        report(f"train toy epoch {epoch}", i + 1, 10)
stage.finish("trained the toy for 2 epochs", epochs=2)
'''


@pytest.fixture
def reporter(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(path))
    monkeypatch.setattr(progress, "_REPORTER", progress._Reporter())
    monkeypatch.setattr(progress, "WRITE_EVERY_S", 0.0)
    return path


def test_report_does_nothing_without_a_runner(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV, raising=False)
    progress.report("loop", 1, 10)  # no file named, nothing to write, no error
    assert list(tmp_path.iterdir()) == []


def test_report_nests_tasks_and_drops_finished_ones(reporter):
    progress.report("variants", 0, 3)
    progress.report("LM en", 5, 10)
    assert [t["step"] for t in progress.read_tasks(reporter)] == ["variants", "LM en"]
    progress.report("LM en", 10, 10)  # done: gone
    assert [t["step"] for t in progress.read_tasks(reporter)] == ["variants"]
    progress.report("LM de", 3, 10)
    progress.report("variants", 1, 3)  # the outer task moved on: what ran inside it is over
    tasks = progress.read_tasks(reporter)
    assert [(t["step"], t["done"], t["total"]) for t in tasks] == [("variants", 1, 3)]


def test_report_throttles_writes(reporter, monkeypatch):
    monkeypatch.setattr(progress, "WRITE_EVERY_S", 3600.0)
    progress.report("loop", 1, 100)  # a new task is written at once
    progress.report("loop", 50, 100)  # within the interval: kept in memory only
    assert progress.read_tasks(reporter)[0]["done"] == 1
    progress.report("loop", 100, 100)  # the end is always written
    assert progress.read_tasks(reporter) == []


def test_only_the_first_process_reports(reporter, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    progress.report("loop", 1, 10)
    assert not reporter.exists()


def test_line_shows_step_fraction_and_eta():
    now = 1000.0
    task = {"step": "train v stage2", "done": 30, "total": 100, "done0": 10, "started": now - 20,
            "updated": now}
    line = progress.progress_line("02_train_variants", 75, [{"step": "variants", "done": 1,
                                                             "total": 14, "done0": 1,
                                                             "started": now}, task], now)
    # 20 steps in 20 s, 70 to go
    assert line == ("[ifl] 02_train_variants 1m15s: variants 1/14 7% > "
                    "train v stage2 30/100 30% ETA 1m10s")


def test_live_mode_rewrites_one_line_in_place(reporter):
    out = io.StringIO()
    board = progress.Board(out, live=True, poll=0.05)
    with board.watch("02_train_variants", reporter):
        progress.report("LM en", 3, 10)
        time.sleep(0.3)
    text = out.getvalue()
    assert "\r[ifl] 02_train_variants" in text and "LM en 3/10" in text
    assert "\n" not in text and text.endswith("\r\x1b[K")  # the line is cleared at the end


def test_summary_table_lists_time_status_and_headline(tmp_path):
    from ifl.stage import open_stage
    board = progress.Board(io.StringIO(), every=60)
    with board.watch("01_translate_data", tmp_path / "a.json"):
        open_stage("01_translate_data", output_root=tmp_path, run_name="r").finish("made 3 tasks")
    with board.watch("02_train_variants", tmp_path / "b.json"):
        pass
    table = board.summary(tmp_path / "runs/r", ["01_translate_data", "02_train_variants",
                                                "03_collect_responses"])
    rows = table.splitlines()
    assert rows[0] == "[ifl] summary" and rows[-1].startswith("total ")
    assert re.match(r"01_translate_data +done +\d+s +made 3 tasks$", rows[2])
    assert re.match(r"02_train_variants +FAILED", rows[3])
    assert re.match(r"03_collect_responses +not run +-", rows[4])


def test_runner_prints_progress_lines_when_output_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks/01_translate_data.py").write_text(SLOW)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"common": {"run_name": "t"}}))
    monkeypatch.chdir(tmp_path)
    assert runner.main(["p.yaml", "--progress-every", "0.4"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[ifl] 01_translate_data ")]
    steps = [ln for ln in lines if "train toy epoch" in ln]
    assert steps, err  # the loop's own progress, not papermill's cell counter
    assert re.search(r"epochs [01]/2 \d+% > train toy epoch [01] \d+/10 \d+%", err), err
    assert "\r" not in err  # a file gets whole lines, no carriage returns
    assert "01_translate_data: done in" in err and "trained the toy for 2 epochs" in err
    assert re.search(r"01_translate_data +done +\d+s +trained the toy", err)  # the summary
    progress_file = tmp_path / "runs/t/logs/01_translate_data.progress.json"
    assert json.loads(progress_file.read_text())["tasks"][0]["step"] == "epochs"  # for `cat`


def test_kernel_starts_without_the_tcp_encryption_warning(tmp_path):
    """ipykernel prints the warning on its own stderr, which a kernel started by papermill
    shares with the runner: run in a subprocess to see it."""
    script = ("import jupytext, papermill\n"
              "from ifl.progress import kernel_options\n"
              "nb = jupytext.reads('# %%\\n1 + 1\\n', fmt='py:percent')\n"
              "nb.metadata['kernelspec'] = {'name': 'ifl', 'language': 'python', 'display_name': 'ifl'}\n"
              f"papermill.execute_notebook(nb, {str(tmp_path / 'o.ipynb')!r}, kernel_name='ifl',\n"
              "                           progress_bar=False, **kernel_options())\n")
    import zmq
    if not zmq.has("curve"):
        pytest.skip("pyzmq without CurveZMQ (libsodium): the kernel cannot encrypt")
    out = subprocess.run([runner.sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "without encryption" not in out.stderr
