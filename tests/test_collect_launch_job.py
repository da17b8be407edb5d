"""What `collect_in_processes` hands its ranks (job.json) reaches `collect_responses` unchanged,
checked without starting accelerate: the launch is replaced by running each rank's `run` in
this process. The chat template travels with its model's `image_first` (a model whose
template puts the question first must be prompted so in every rank)."""
from __future__ import annotations

import dataclasses
import io
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from ifl.collect import collect_responses
from ifl.collect import launch, worker
from ifl.collect.store import CONTENT
from ifl.collect.synthetic import blank_image, tiny_llava
from ifl.data.schema import tasks_frame
from ifl.prompts import template

torch.set_num_threads(1)


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    blank_image(40, k).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tasks():
    return tasks_frame([dict(task_id=f"t{k}", parallel_id=f"p{k}", benchmark="mini", lang="en",
                             question=f"What is it{'?' * (k + 1)}", image=_png(k), reference="x",
                             description="A thing.", description_lang="en") for k in range(4)])


def ranks_in_this_process(cmd, **_):
    """Stands in for `accelerate launch`: every rank's work, one after the other, here."""
    job = json.loads(Path(cmd[-1]).read_text(encoding="utf-8"))
    for rank in range(2):
        rows = worker.run(job, rank, 2, rank)
        worker._write_status(worker.rank_files(job["log_dir"], rank)[1], dict(ok=True, rows=rows))
    return subprocess.CompletedProcess(cmd, 0, "", "")


def test_ranks_prompt_with_the_rows_template_image_first_included(tasks, tmp_path, monkeypatch):
    question_first = dataclasses.replace(template("llava_hf"), image_first=False)
    collect = dict(model_name="tiny", template=question_first, max_new_tokens=3, batch_size=2)
    reference = collect_responses(*tiny_llava(0), tasks, out_dir=tmp_path / "one", progress=False,
                                  **collect)[CONTENT]
    assert reference["prompt"].str.contains(r"\?\s*\n.*A thing\.", regex=True).any()  # question first

    monkeypatch.setattr(launch.subprocess, "run", ranks_in_this_process)
    got = launch.collect_in_processes(tasks, processes=2, out_dir=tmp_path / "two", collect=collect,
                                      loader="ifl.collect.synthetic:tiny_llava",
                                      loader_kwargs=dict(seed=0), pass_device=False)
    pd.testing.assert_frame_equal(got[CONTENT], reference)


def test_more_ranks_than_gpus_is_refused_naming_the_key(tasks, tmp_path, monkeypatch):
    from ifl.runtime import collect_in_ranks

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(launch.subprocess, "run", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ValueError, match=r"03_collect_responses.processes=2, but 1 GPUs"):
        collect_in_ranks(dict(source="x", revision=None), tasks, processes=2, out_dir=tmp_path,
                         dtype="bfloat16", quantization="none", device="cuda", threads=None,
                         collect=dict(model_name="m", template="llava_hf", max_new_tokens=2,
                                      batch_size=2), key="03_collect_responses.processes")


def _option(cmd: list[str], flag: str) -> str:
    assert cmd.count(flag) == 1, f"{flag} not once in {cmd}"
    return cmd[cmd.index(flag) + 1]


def test_accelerate_command_carries_the_node_options(tmp_path):
    cmd = launch.accelerate_command(tmp_path / "job.json", processes=8, machines=2, machine_rank=1,
                                    main_address="10.0.0.1", main_port=29600)
    assert (_option(cmd, "--num_processes"), _option(cmd, "--num_machines"),
            _option(cmd, "--machine_rank"), _option(cmd, "--main_process_ip"),
            _option(cmd, "--main_process_port")) == ("16", "2", "1", "10.0.0.1", "29600")
    assert "--multi_gpu" in cmd and cmd[-3:] == ["-m", "ifl.collect.worker", str(tmp_path / "job.json")]
    one = launch.accelerate_command(tmp_path / "job.json", processes=1)
    assert "--main_process_ip" not in one and "--multi_gpu" not in one


@pytest.mark.parametrize("block", ["03_collect_responses", "07_steering"])
def test_notebook_params_reach_the_launch_command(block, tasks, tmp_path, monkeypatch):
    """`-p <block>.machines=2 ...` on the command line: validated, and the notebook's launch
    (ifl.runtime.collect_in_ranks with the block's machine options) is accelerate launch with
    --num_machines/--machine_rank/--main_process_ip/--main_process_port; a node waits for the
    other's rows (here stored by the stand-in launch) before it returns them."""
    from ifl.params import ParamsError, load_params
    from ifl.params_schema import section
    from ifl.runtime import collect_in_ranks, launches, machine_options

    keys = [f"{block}.machines=2", f"{block}.machine_rank=1", f"{block}.main_address=node-a",
            f"{block}.main_port=29511"]
    in_process = {"03_collect_responses": ("precision_check", "true"),
                  "07_steering": ("sweep_depths", "[0.5]")}[block]
    with pytest.raises(ParamsError, match=rf"{block}.{in_process[0]}\): the .* collects in the "
                                          "notebook's own process"):
        load_params("params/default.yaml", overrides=keys + [f"{block}.{in_process[0]}={in_process[1]}"])
    if block == "07_steering":  # params/default.yaml sweeps; the multi-node run does not
        keys.append(f"{block}.sweep_depths=[]")
    p = section(load_params("params/default.yaml", overrides=keys), block)
    assert launches(p)  # processes: 1 on each of 2 nodes is still a launch
    launched = []

    def both_nodes(cmd, **kw):  # this node's ranks and the other node's, here
        launched.append(cmd)
        job = json.loads(Path(cmd[-1]).read_text(encoding="utf-8"))
        for rank in range(2):
            rows = worker.run(job, rank, 2, rank)
            worker._write_status(worker.rank_files(job["log_dir"], rank)[1], dict(ok=True, rows=rows))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(launch.subprocess, "run", both_nodes)
    monkeypatch.setattr("ifl.models.load_llava", lambda **kw: tiny_llava(0))
    collect = dict(model_name="tiny", template="llava_hf", max_new_tokens=3, batch_size=2)
    got = collect_in_ranks(dict(source="x", revision=None), tasks, processes=p.processes,
                           out_dir=tmp_path, dtype="float32", quantization="none", device="cpu",
                           threads=1, collect=collect, key=f"{block}.processes",
                           **machine_options(p))
    (cmd,) = launched
    assert (_option(cmd, "--num_machines"), _option(cmd, "--machine_rank"),
            _option(cmd, "--main_process_ip"), _option(cmd, "--main_process_port"),
            _option(cmd, "--num_processes")) == ("2", "1", "node-a", "29511", "2")
    assert len(got) == 2 * len(tasks)  # both conditions of every task: the other node's too

    with pytest.raises(ParamsError, match=rf"{block}.machine_rank=2 must be below {block}.machines=2"):
        load_params("params/default.yaml", overrides=keys + [f"{block}.machine_rank=2"])
    with pytest.raises(ParamsError, match=rf"{block}.machines=2 needs {block}.main_address"):
        load_params("params/default.yaml", overrides=keys[:2])


def test_a_node_whose_partner_never_stores_its_rows_fails_naming_the_folder(tasks, tmp_path,
                                                                             monkeypatch):
    """machines > 1 and a wait: when the other node's rows do not come, the notebook does not
    go on with half the rows."""
    def this_node_only(cmd, **kw):  # rank 0 of world 2 (node 0); node 1 never writes its shard
        job = json.loads(Path(cmd[-1]).read_text(encoding="utf-8"))
        rows = worker.run(job, 0, 2, 0)
        worker._write_status(worker.rank_files(job["log_dir"], 0)[1], dict(ok=True, rows=rows))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(launch.subprocess, "run", this_node_only)
    collect = dict(model_name="tiny", template="llava_hf", max_new_tokens=3, batch_size=2)
    with pytest.raises(launch.RankFailedError, match=r"after 0\.2 s|rows of the other nodes"):
        launch.collect_in_processes(tasks, processes=1, machines=2, machine_rank=0,
                                    main_address="node-a", out_dir=tmp_path, collect=collect,
                                    loader="ifl.collect.synthetic:tiny_llava",
                                    loader_kwargs=dict(seed=0), pass_device=False, wait_s=0.2)
