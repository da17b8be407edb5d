"""ifl.collect on a tiny random LLaVA (CPU, float32): batching, both conditions, resume, shards, OOM.

The reference for every property is `one_at_a_time`: each prompt alone through processor and
generate, no padding, no ifl.collect code. Greedy decoding makes "equal" exact.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from ifl.collect import collect_responses, load_responses, merge_shards, shard_of
from ifl.collect.store import CONTENT, KEY, ResponseConflictError, PartWriter, model_dir, read_parts
from ifl.collect.synthetic import blank_image, tiny_llava
from ifl.data.schema import tasks_frame
from ifl.prompts import query, template

ROOT = Path(__file__).resolve().parents[1]
T = template("llava_hf")
MAX_NEW = 10
QUESTIONS = ["What colour is it?", "Wie viele?", "Describe everything you see, in detail.", "Why?",
             "Is it a cat or a dog, and how can you tell?"]

torch.set_num_threads(1)  # shared CPU


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    blank_image(40, seed).save(buf, format="PNG")  # 40 px: the processor resizes and crops to 32
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def tasks() -> pd.DataFrame:
    """10 tasks of varied length; t03 has no image (a MultiQ-like text-only task)."""
    return tasks_frame([dict(task_id=f"t{k:02d}", parallel_id=f"p{k}", benchmark="mini",
                             lang="de" if k % 2 else "en", question=QUESTIONS[k % 5] + " ?" * (k % 3),
                             image=None if k == 3 else _png(k), reference="x",
                             description=" ".join(["A small thing."] * (1 + k % 4)),
                             description_lang="en") for k in range(10)])


def one_at_a_time(model, processor, tasks) -> pd.DataFrame:
    """Independent reference: every (task, condition) alone, unpadded."""
    tok, rows = processor.tokenizer, []
    for r in tasks.itertuples():
        for cond in ("image", "text"):
            if cond == "image" and r.image is None:
                continue
            prompt = query(T, r.question, image=cond == "image", description=r.description)
            images = [Image.open(io.BytesIO(r.image)).convert("RGB")] if cond == "image" else None
            inputs = processor(text=[prompt], images=images, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
            new = out[0, inputs["input_ids"].shape[1]:].tolist()
            if tok.eos_token_id in new:
                new = new[:new.index(tok.eos_token_id) + 1]
            rows.append(dict(model="tiny", task_id=r.task_id, condition=cond, prompt=prompt,
                             response=tok.decode(new, skip_special_tokens=True).strip(),
                             n_prompt_tokens=inputs["input_ids"].shape[1], n_new_tokens=len(new)))
    return pd.DataFrame(rows).sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tiny, tasks) -> pd.DataFrame:
    return one_at_a_time(*tiny, tasks)


def collect(model, processor, tasks, out_dir, **kw):
    kw = dict(model_name="tiny", template="llava_hf", max_new_tokens=MAX_NEW, batch_size=4,
              out_dir=out_dir, progress=False) | kw
    return collect_responses(model, processor, tasks, **kw)


def assert_same(df: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert not df.duplicated(KEY).any()
    pd.testing.assert_frame_equal(df[CONTENT].reset_index(drop=True), reference[CONTENT],
                                  check_dtype=False)


class Wrapped:
    """A model whose generate can be made to fail (or slow down) by batch size or call number."""

    def __init__(self, model, fail=None):
        self.model, self.fail, self.calls = model, fail, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kwargs):
        self.calls.append(kwargs["input_ids"].shape[0])
        if self.fail:
            self.fail(self.calls[-1], len(self.calls))
        return self.model.generate(**kwargs)


def test_batched_equals_one_at_a_time(tiny, tasks, reference, tmp_path):
    df = collect(*tiny, tasks, tmp_path, batch_size=7)  # 7: batches mix many prompt lengths
    assert_same(df, reference)
    assert (df.n_new_tokens < MAX_NEW).any() and (df.n_new_tokens == MAX_NEW).any()  # eos path
    assert (df.response.str.len() > 0).all()
    assert set(df.batch_size) <= {1, 2, 3, 4, 5, 6, 7} and df.seconds.gt(0).all()
    assert tiny[1].tokenizer.padding_side == "left"


def test_both_conditions_prompts(tiny, tasks, reference, tmp_path):
    df = collect(*tiny, tasks, tmp_path).set_index(KEY)
    assert len(df) == 2 * len(tasks) - 1  # t03 has no image: text condition only
    assert ("t03", "image") not in df.index
    tok = tiny[1].tokenizer
    for (task_id, cond), row in df.iterrows():
        desc = tasks.set_index("task_id").description[task_id]
        if cond == "image":
            assert "<image>" in row.prompt and desc not in row.prompt
            # <image> (1 token in the tokenizer) expands to the tower's 16 patch tokens
            assert row.n_prompt_tokens == len(tok(row.prompt)["input_ids"]) + 15
        else:
            assert "<image>" not in row.prompt and desc in row.prompt
            assert row.n_prompt_tokens == len(tok(row.prompt)["input_ids"])
    # the only difference between the conditions is what stands where <image> would be
    a, b = df.loc[("t00", "image"), "prompt"], df.loc[("t00", "text"), "prompt"]
    assert a.replace("<image>", tasks.description[0]) == b


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])  # KeyboardInterrupt: SIGINT
def test_resume_after_exception(tiny, tasks, reference, tmp_path, error):
    def crash(n, call):
        if call == 3:
            raise error("simulated crash")

    with pytest.raises(error, match="simulated"):
        # flush_every > all rows: only the flush on the way out saves the first two batches
        collect(Wrapped(tiny[0], crash), tiny[1], tasks, tmp_path, batch_size=3, flush_every=1000)
    saved = load_responses(tmp_path, "tiny")
    assert len(saved) == 6  # two batches of 3
    again = Wrapped(tiny[0])
    assert_same(collect(again, tiny[1], tasks, tmp_path, batch_size=3), reference)
    assert sum(again.calls) == len(reference) - 6  # nothing redone
    assert_same(collect(again, tiny[1], tasks, tmp_path), reference)  # complete: no new calls
    assert sum(again.calls) == len(reference) - 6
    assert not read_parts(tmp_path, "tiny").duplicated(KEY).any()


CHILD = """
import sys, time, torch, pandas as pd
torch.set_num_threads(1)
from ifl.collect import collect_responses
from ifl.collect.synthetic import tiny_llava
model, processor = tiny_llava(seed=0)
class Slow:
    def __getattr__(self, name): return getattr(model, name)
    def generate(self, **kw):
        time.sleep(0.25)
        return model.generate(**kw)
collect_responses(Slow(), processor, pd.read_parquet(sys.argv[1]), model_name="tiny",
                  template="llava_hf", max_new_tokens={max_new}, batch_size=2, flush_every=1,
                  out_dir=sys.argv[2], progress=False)
"""


def test_resume_after_sigkill(tiny, tasks, reference, tmp_path):
    tasks.to_parquet(tmp_path / "tasks.parquet")
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(max_new=MAX_NEW)))
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "tasks.parquet"), str(out)],
                             cwd=ROOT, env=os.environ | {"HF_HUB_OFFLINE": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600  # a guard against a hung child, not a speed check
    while len(list((out / "tiny").glob("part-*.parquet"))) < 2:
        assert child.poll() is None, child.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "child wrote no parts in 600 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    partial = load_responses(out, "tiny")
    assert 0 < len(partial) < len(reference)  # killed mid-run
    # a temp file from a write the kill interrupted is never read and is cleaned up
    (out / "tiny" / ".part-00099.parquet.tmp").write_bytes(b"half a parquet file")
    df = collect(*tiny, tasks, out)
    assert_same(df, reference)
    assert not read_parts(out, "tiny").duplicated(KEY).any()
    assert not list((out / "tiny").glob(".*.tmp"))


@pytest.mark.parametrize("n", [2, 3])
def test_shards_merge_to_unsharded(tiny, tasks, reference, tmp_path, n):
    seen = []
    for i in range(n):
        part = collect(*tiny, tasks, tmp_path, shard=(i, n))
        assert set(part.task_id) == {t for t in tasks.task_id if shard_of(t, n) == i}
        seen += list(part.task_id)
        assert (model_dir(tmp_path, "tiny") / f"shard-{i:03d}-of-{n:03d}").is_dir()
    assert sorted(set(seen)) == sorted(tasks.task_id)  # disjoint cover (t03 appears once)
    expected = reference[KEY]
    assert_same(merge_shards(tmp_path, "tiny", expected=expected), reference)
    assert_same(pd.read_parquet(model_dir(tmp_path, "tiny") / "responses.parquet"), reference)


def test_merge_names_missing_shard(tiny, tasks, reference, tmp_path):
    collect(*tiny, tasks, tmp_path, shard=(0, 2))
    with pytest.raises(FileNotFoundError, match="shard-001-of-002"):
        merge_shards(tmp_path, "tiny", expected=reference[KEY])


def test_oom_halves_batch_and_loses_nothing(tiny, tasks, reference, tmp_path):
    def oom(n, call):
        if n > 2:
            raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory")

    model = Wrapped(tiny[0], oom)
    df = collect(model, tiny[1], tasks, tmp_path, batch_size=8)
    assert_same(df, reference)
    assert model.calls[:3] == [8, 4, 2]  # halved twice on the first batch, then kept at 2
    assert max(model.calls[3:]) <= 2 and set(df.batch_size) <= {1, 2}

    def always(n, call):
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError):  # at batch size 1 there is nothing to halve
        collect(Wrapped(tiny[0], always), tiny[1], tasks, tmp_path / "b", batch_size=2)


def test_steering_entered_around_each_generate(tiny, tasks, tmp_path):
    log = []

    def steer(model, inputs):
        @contextmanager
        def cm():
            log.append(("enter", inputs["input_ids"].shape[0]))
            yield
            log.append(("exit",))
        return cm()

    df = collect(*tiny, tasks, tmp_path, batch_size=5, steering=steer)
    assert [e[0] for e in log] == ["enter", "exit"] * (len(log) // 2)
    assert sum(e[1] for e in log if e[0] == "enter") == len(df)


def test_rerun_with_other_settings_is_refused(tiny, tasks, tmp_path):
    collect(*tiny, tasks.head(2), tmp_path)
    with pytest.raises(ResponseConflictError, match="max_new_tokens"):
        collect(*tiny, tasks.head(2), tmp_path, max_new_tokens=MAX_NEW + 1)


def test_load_responses_deduplicates_and_complains(tmp_path):
    row = dict(model="m", task_id="a", condition="text", prompt="p", response="hi",
               n_prompt_tokens=3, n_new_tokens=1, seconds=0.1, batch_size=1)
    writer = PartWriter(model_dir(tmp_path, "m"))
    writer.write([row])
    writer.write([row | {"seconds": 0.2, "batch_size": 4}])  # same content, other timing: fine
    assert len(load_responses(tmp_path, "m")) == 1
    writer.write([row | {"response": "hello"}])
    with pytest.raises(ResponseConflictError, match="part-0000"):
        load_responses(tmp_path, "m")


def test_throughput_benchmark_tiny_check():
    run = subprocess.run([sys.executable, "benchmarks/collect_throughput.py", "--tiny", "--check"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "check passed" in run.stdout
    assert "collect bs=64" in run.stdout and "tiny/4bit" in run.stdout


def test_default_shard_from_launcher(monkeypatch):
    import types

    from ifl.collect.store import default_shard

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert default_shard() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")

    class State:  # stands in for accelerate.PartialState
        process_index, num_processes = 1, 3

    monkeypatch.setitem(sys.modules, "accelerate", types.SimpleNamespace(PartialState=State))
    assert default_shard() == (1, 3)  # accelerate's view, when it agrees with the launcher
    State.num_processes = 1  # a PartialState that missed the process group (torchrun on CPU)
    assert default_shard() == (2, 3)
