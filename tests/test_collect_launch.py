"""ifl.collect.launch: 2 CPU processes through `accelerate launch` give the rows of 1 process; a
failed rank is named with its log; a rerun does only what is missing; a complete run launches
nothing. (Two launches of a tiny model: ~1 minute on a busy 2-core machine.)"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from ifl.collect import collect_responses, shard_of
from ifl.collect.launch import RankFailedError, collect_in_processes
from ifl.collect.store import CONTENT
from ifl.collect.synthetic import blank_image, tiny_llava
from ifl.data.schema import tasks_frame

torch.set_num_threads(1)
COLLECT = dict(model_name="tiny", template="llava_hf", max_new_tokens=6, batch_size=3)


def tiny_llava_failing_on_rank_1(seed: int = 0):
    """A loader for the test: rank 1 fails while loading (as an out-of-memory or a missing
    checkpoint on one node would)."""
    if os.environ.get("RANK") == "1":
        raise RuntimeError("simulated failure while loading on rank 1")
    return tiny_llava(seed)


def _png(k: int) -> bytes:
    buf = io.BytesIO()
    blank_image(40, k).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tasks():
    return tasks_frame([dict(task_id=f"t{k:02d}", parallel_id=f"p{k}", benchmark="mini", lang="en",
                             question="What is it?" + " ?" * k, image=_png(k), reference="x",
                             description="A thing." * (1 + k % 2), description_lang="en")
                        for k in range(6)])


@pytest.mark.slow
def test_two_processes_equal_one_fail_named_rerun_missing_only(tasks, tmp_path, monkeypatch):
    assert {shard_of(t, 2) for t in tasks.task_id} == {0, 1}  # both ranks have work
    reference = collect_responses(*tiny_llava(0), tasks, out_dir=tmp_path / "one", progress=False,
                                  **COLLECT)[CONTENT]
    out = tmp_path / "two"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    kw = dict(processes=2, out_dir=out, collect=COLLECT, loader_kwargs=dict(seed=0),
              pass_device=False, threads=1, timeout=300)
    with pytest.raises(RankFailedError, match=r"rank 1: RuntimeError: simulated") as err:
        collect_in_processes(tasks, loader="test_collect_launch:tiny_llava_failing_on_rank_1", **kw)
    log = out / "tiny" / "launch" / "rank-1.log"
    assert str(log) in str(err.value) and "simulated failure" in log.read_text()
    assert not list((out / "tiny").glob("shard-001-of-002/part-*"))  # rank 1 did nothing
    # (torchrun stops rank 0 when rank 1 fails; whatever rank 0 finished is kept)

    df = collect_in_processes(tasks, loader="ifl.collect.synthetic:tiny_llava", **kw)
    pd.testing.assert_frame_equal(df[CONTENT], reference)
    assert (out / "tiny" / "responses.parquet").exists()
    # the rerun: rank 1 did its whole shard (rank 0 what it had left)
    n1 = sum(shard_of(t, 2) == 1 for t in tasks.task_id) * 2
    assert f"shard 1/2: {n1} of {n1}" in log.read_text()

    stamp = (out / "tiny" / "launch" / "rank-0.json").stat().st_mtime_ns
    again = collect_in_processes(tasks, loader="no.such:loader", **kw)  # all stored: no launch
    pd.testing.assert_frame_equal(again[CONTENT], reference)
    assert (out / "tiny" / "launch" / "rank-0.json").stat().st_mtime_ns == stamp
