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
