"""`collect_responses`: notebook 03's engine. Every task x condition, greedy, resumable, shardable.

    model, processor = ifl.models.load_llava("llava-hf/llava-1.5-7b-hf", quantization="4bit")
    df = collect_responses(model, processor, tasks, model_name="llava-1.5-7b",
                           template="llava_hf", max_new_tokens=128, batch_size=64,
                           out_dir=stage.path("responses"))

Rerunning the same call after a crash, Ctrl-C or `kill -9` skips the (task_id, condition)
pairs already stored and yields exactly the rows of an uninterrupted run. To split the work over
N processes, give each `shard=(i, N)` (or run under `accelerate launch`, which sets it), then
`merge_shards(out_dir, model_name)` once all are done.
"""
from __future__ import annotations

import logging
import os
from dataclasses import is_dataclass
from typing import Callable

import pandas as pd
from tqdm.auto import tqdm

from ifl.collect.options import Speedups
from ifl.collect.engine import CONDITIONS, AdaptiveBatches, build_items, generate_batch, measure, order
from ifl.collect.store import (KEY, PartWriter, check_settings, default_shard, load_responses,
                               model_dir, shard_dir, shard_of)
from ifl.progress import report as report_progress
from ifl.prompts import ChatTemplate, stop_token_ids
from ifl.prompts import template as get_template

log = logging.getLogger(__name__)


def collect_responses(model, processor, tasks: pd.DataFrame, *, model_name: str,
                      template: str | ChatTemplate, conditions=CONDITIONS, max_new_tokens: int,
                      min_new_tokens: int | None = None, batch_size: int,
                      out_dir: str | os.PathLike, shard: tuple[int, int] | None = (0, 1),
                      flush_every: int = 256, progress: bool = True,
                      steering: Callable | None = None, speedups=None,
                      **generate_kwargs) -> pd.DataFrame:
    """Generate (greedy) every missing response of this shard's tasks; return all of them.

    tasks: task rows (ifl.data.schema): task_id, question, image (bytes or None), description.
    template: a chat template or its name in ifl/prompts.yaml (e.g. "llava_hf").
    conditions: "image" (the decoded image) and/or "text" (the description in its place).
    batch_size: rows per generate call; halved on CUDA out-of-memory (column `batch_size`
        records what each row ran with).
    shard: (i, n) runs only tasks with shard_of(task_id, n) == i; None reads it from
        accelerate's PartialState (rank, world size) when launched distributed, else (0, 1).
    flush_every: rows buffered before a part file is written (also written on any exception,
        Ctrl-C included; a SIGKILL loses at most this many rows, which a rerun redoes).
    steering: optional `steering(model, inputs) -> context manager`, entered around each
        generate call (see engine.generate_batch). Its repr is saved in settings.json.
    speedups: ifl.collect.options.Speedups (or a dict / list of names): prefix sharing, static
        cache, compiled decoding. Same rows either way, so not part of settings.json.
    generate_kwargs: passed on to every `generate` call.

    Returns one row per (task_id, condition) of this shard (model, task_id, condition, prompt,
    response, n_prompt_tokens, n_new_tokens, seconds, batch_size), sorted by task_id, condition;
    rows stored by earlier runs included.

    The padding side of `processor.tokenizer` is set to "left" (needed for batched generation).
    """
    t = get_template(template) if isinstance(template, str) else template
    speedups = Speedups.of(speedups)
    shard = default_shard() if shard is None else tuple(shard)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    if tasks["task_id"].duplicated().any():
        raise ValueError(f"task_id {tasks.task_id[tasks.task_id.duplicated()].iloc[0]!r} repeats")
    mine = tasks[[shard_of(tid, n) == i for tid in tasks["task_id"]]]
    items = build_items(mine, t, conditions)

    folder = shard_dir(out_dir, model_name, shard)
    folder.mkdir(parents=True, exist_ok=True)
    check_settings(folder, model_dir(out_dir, model_name),
                   dict(model=model_name, template=t.name, max_new_tokens=max_new_tokens,
                        min_new_tokens=min_new_tokens, steering=_describe(steering),
                        # recorded only when set, so runs stored before the key existed resume
                        **({} if t.image_first else {"image_first": False})))
    done = set(map(tuple, load_responses(out_dir, model_name)[KEY].itertuples(index=False)))
    todo = [it for it in items if (it.task_id, it.condition) not in done]
    log.info("%s shard %d/%d: %d of %d completions to do", model_name, i, n, len(todo), len(items))

    if todo:
        _prepare(processor)
        measure(todo, processor)
        _run(model, processor, todo, folder, model_name=model_name, batch_size=batch_size,
             flush_every=flush_every, progress=progress, max_new_tokens=max_new_tokens,
             min_new_tokens=min_new_tokens, steering=steering, speedups=speedups,
             stop_ids=stop_token_ids(t, processor.tokenizer, model.generation_config),
             **generate_kwargs)

    wanted = {(it.task_id, it.condition) for it in items}
    out = load_responses(out_dir, model_name)
    keep = [(a, b) in wanted for a, b in zip(out.task_id, out.condition)]
    return out[keep].reset_index(drop=True)


def _run(model, processor, todo, folder, *, model_name, batch_size, flush_every, progress,
         speedups, **generate_kwargs) -> None:
    writer = PartWriter(folder)
    batches = AdaptiveBatches(batch_size)
    buffer: list[dict] = []
    done = 0
    bar = tqdm(total=len(todo), desc=model_name, unit="completion", disable=not progress)
    try:
        groups = order(todo, by_image=speedups.share_prefix)
        for rows in batches.run(groups, lambda b: generate_batch(model, processor, b,
                                                                 speedups=speedups,
                                                                 **generate_kwargs)):
            buffer.extend({"model": model_name, **r} for r in rows)
            bar.update(len(rows))
            done += len(rows)
            report_progress(f"collect {model_name}", done, len(todo))
            if len(buffer) >= flush_every:
                # hand the rows over before writing: a Ctrl-C inside write() then loses them
                # (a rerun redoes them) instead of writing them twice from `finally`
                full, buffer = buffer, []
                writer.write(full)
    finally:
        # whatever finished before an exception (or Ctrl-C) is complete and correct: keep it
        writer.write(buffer)
        bar.close()


def _prepare(processor) -> None:
    """Left padding, and a pad token (a tokenizer without one pads with end-of-sequence)."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def _describe(steering) -> str | None:
    """A stable description of a steering callable: its repr if it is a dataclass (whose repr
    lists its settings), else its qualified name (a default repr carries a memory address)."""
    if steering is None:
        return None
    if is_dataclass(steering):
        return repr(steering)
    return getattr(steering, "__qualname__", type(steering).__qualname__)
