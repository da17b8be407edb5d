"""Greedy generation for the two conditions, in length-sorted, left-padded batches.

The experiment (§3.1) asks each task twice: `image` (the image beside the question) and `text`
(the task's description in the image's place, via `ifl.prompts.query`). This module turns task
rows into work items, groups them into batches and generates; it touches no files.

Why batching is safe: with left padding every row's last prompt token sits at the same column,
the attention mask hides the pads and position ids are counted from the mask, so greedy decoding
of a row does not depend on its neighbours (tests check batched == one at a time in float32).
Sorting by prompt length (image tokens included: 576 per image for LLaVA-1.5) keeps padding low,
and the longest batches run first, so an out-of-memory shows up at once.

>>> from ifl.prompts import template
>>> import pandas as pd
>>> tasks = pd.DataFrame([dict(task_id="t1", question="Colour?", image=None, description="A red star.")])
>>> [(i.condition, i.prompt) for i in build_items(tasks, template("llava_hf"), ("image", "text"))]
[('text', 'USER: A red star.\\nColour? ASSISTANT:')]
"""
from __future__ import annotations

import io
import logging
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import pandas as pd
import torch

from ifl.collect import prefix
from ifl.collect.options import Speedups
from ifl.compat import compile_config, generate_cache_kwarg
from ifl.prompts import IMAGE_TOKEN, ChatTemplate, query

log = logging.getLogger(__name__)
CONDITIONS = ("image", "text")


@dataclass
class Item:
    """One completion to make: a task in one condition."""
    task_id: str
    condition: str       # "image" | "text"
    prompt: str          # the text prompt, `<image>` not yet expanded
    image: bytes | None  # encoded image (PNG/JPEG), decoded only when its batch runs
    length: int = 0      # prompt tokens incl. image tokens (set by `measure`; for sorting)


def build_items(tasks: pd.DataFrame, t: ChatTemplate, conditions=CONDITIONS) -> list[Item]:
    """Work items for every task x condition. A task without an image (a text-only benchmark
    such as MultiQ) has no `image` item; its `text` item is the question with its description
    (if any) in front."""
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; use a subset of {CONDITIONS}")
    items = []
    for row in tasks.itertuples(index=False):
        image = getattr(row, "image", None)
        image = None if image is None or (isinstance(image, float) and pd.isna(image)) else image
        description = getattr(row, "description", None)
        description = None if description is None or pd.isna(description) else description
        for condition in conditions:
            if condition == "image":
                if image is not None:
                    items.append(Item(row.task_id, "image", query(t, row.question, image=True),
                                      bytes(image)))
                continue
            if image is not None and description is None:
                raise ValueError(f"task {row.task_id!r} has an image but no description: the "
                                 "text condition needs one (fill `description` in the task table)")
            items.append(Item(row.task_id, "text",
                              query(t, row.question, image=False, description=description), None))
    return items


def decode_image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def measure(items: list[Item], processor) -> None:
    """Set each item's `length`: tokenizer length, plus the tokens one `<image>` expands to.
    The expansion is measured once on the first image, through the processor itself (576 - 1
    extra for LLaVA-1.5 at 336 px), so this needs no knowledge of the processor's rules."""
    tok = processor.tokenizer
    lengths = [len(ids) for ids in tok([it.prompt for it in items])["input_ids"]] if items else []
    first = next((it for it in items if it.image is not None), None)
    extra = 0
    if first is not None:
        image_token = getattr(processor, "image_token", IMAGE_TOKEN)
        expanded = processor(text=[image_token], images=[decode_image(first.image)])["input_ids"][0]
        extra = len(expanded) - len(tok([image_token])["input_ids"][0])
    for it, n in zip(items, lengths):
        it.length = n + extra * it.prompt.count(getattr(processor, "image_token", IMAGE_TOKEN))


def order(items: list[Item], *, by_image: bool = False) -> list[list[Item]]:
    """Items grouped by condition (a batch has images for all rows or for none), each group
    longest first; ties broken by task_id so the order is reproducible.

    by_image: image items of the same image next to each other (the languages of one item),
    images by their longest prompt first, so that a batch holds few distinct images and a
    shared prefix is computed once for many rows (prefix.py)."""
    groups = {c: sorted((it for it in items if it.condition == c), key=lambda it: (-it.length, it.task_id))
              for c in CONDITIONS}
    if by_image:  # stable: within an image, still longest first
        rank: dict = {}
        for it in groups["image"]:
            rank.setdefault(it.image, len(rank))
        groups["image"].sort(key=lambda it: rank[it.image])
    return [g for g in groups.values() if g]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def generate_batch(model, processor, items: list[Item], *, max_new_tokens: int,
                   min_new_tokens: int | None = None, steering: Callable | None = None,
                   stop_ids: list[int] | None = None, speedups: Speedups = Speedups(),
                   **generate_kwargs) -> list[dict]:
    """Greedy completions of `items` in one processor call and one `generate` call.

    inputs: input_ids/attention_mask [batch, prompt_len] (left-padded), pixel_values
    [batch, 3, H, W] for image items; output of generate [batch, prompt_len + new_len].
    `steering(model, inputs)`, if given, returns a context manager that is entered around
    `generate` (e.g. hooks adding a vector at one layer; it sees the batch's attention mask).
    Returns one dict per item: task_id, condition, prompt, response, n_prompt_tokens,
    n_new_tokens (up to and including the first end-of-sequence token), seconds (this
    batch's wall time / batch size), batch_size.
    stop_ids: token ids that end an answer (`ifl.prompts.stop_token_ids`: eos plus the chat
    template's end-of-turn); None: the generation config's and tokenizer's eos only.
    speedups: prefix sharing, static cache, compiled decoding (options.py; same outputs).
    generate_kwargs: passed on to `generate` (e.g. stop strings)."""
    tok = processor.tokenizer
    start = time.perf_counter()
    images = [decode_image(it.image) for it in items] if items[0].image is not None else None
    inputs = processor(text=[it.prompt for it in items], images=images, return_tensors="pt",
                       padding=True)
    # floats (pixel_values) to the model's dtype (bf16, or the compute dtype of a 4-bit model)
    inputs = inputs.to(model.device, dtype=model.dtype)
    eos = set(stop_ids) if stop_ids is not None else _eos_ids(model, tok)
    kwargs = dict(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                  pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos))
    if min_new_tokens:
        kwargs["min_new_tokens"] = min_new_tokens
    kwargs.update(generate_kwargs)
    shared = _share(model, processor, items, inputs, speedups, steering)
    if shared is not None:
        inputs = shared.inputs  # [prefix][pads][suffix]: pads moved after the shared prefix
    prompt_len = inputs["input_ids"].shape[1]
    static_len = prompt_len + max_new_tokens if speedups.static_cache else None
    if speedups.static_cache and shared is None:
        kwargs["cache_implementation"] = "static"
    if speedups.compile:
        kwargs["compile_config"] = compile_config(model.device)
        _fresh_compiler_for(model)
    with torch.inference_mode():
        if shared is not None:  # unsteered: _share allows only steering of generated positions
            kwargs[generate_cache_kwarg()] = prefix.prefill(model, shared, static_len=static_len)
        with steering(model, inputs) if steering else nullcontext():
            out = model.generate(**inputs, **kwargs)
    new = out[:, prompt_len:].cpu().tolist()   # [batch, new_len]; finished rows padded after eos
    n_prompt = inputs["attention_mask"].sum(dim=1).cpu().tolist()
    seconds = (time.perf_counter() - start) / len(items)
    rows = []
    for it, ids, n_p in zip(items, new, n_prompt):
        n_new = next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))
        rows.append(dict(task_id=it.task_id, condition=it.condition, prompt=it.prompt,
                         response=tok.decode(ids[:n_new], skip_special_tokens=True).strip(),
                         n_prompt_tokens=int(n_p), n_new_tokens=n_new, seconds=seconds,
                         batch_size=len(items)))
    return rows


def _share(model, processor, items, inputs, speedups: Speedups, steering) -> prefix.SharedPrefix | None:
    """The batch re-laid for prefix sharing, or None for the plain path (logged, with why)."""
    if not speedups.share_prefix or items[0].image is None:
        return None  # text-condition batches have no image prefix: nothing to say
    if steering is not None and getattr(steering, "positions", None) != "generated":
        reason = ("steering may act on prompt positions (only positions='generated' leaves the "
                  "shared prefix unchanged)")
    else:
        image_token = getattr(processor, "image_token", IMAGE_TOKEN)
        shared = prefix.plan(inputs, [it.image for it in items],
                             image_token_id=processor.tokenizer.convert_tokens_to_ids(image_token),
                             pad_token_id=processor.tokenizer.pad_token_id)
        if not isinstance(shared, str):
            return shared
        reason = shared
    if reason not in _SAID:  # once per reason and process, not once per batch
        _SAID.add(reason)
        log.warning("prefix sharing off, plain path for such batches: %s", reason)
    return None


_SAID: set[str] = set()


_COMPILED_FOR: list = [None]  # a weak reference to the model compiled decoding last ran for


def _fresh_compiler_for(model) -> None:
    """Reset torch.compile when compiled decoding starts for another model than last time.

    Its recompile limit (torch._dynamo.config.recompile_limit, 8) counts per code object, and
    every model of a class runs the same forward code: without a reset, a model that used the
    limit up (BakLLaVA's sliding-window cache recompiles at every token; any model with more
    than 8 batch shapes) leaves the next model of the process decoding uncompiled, silently.
    A weak reference, so a new model at a freed model's address is not taken for it."""
    last = _COMPILED_FOR[0]
    if last is not None and last() is model:
        return
    if last is not None:
        torch._dynamo.reset()
        log.info("compiled decoding: a new model, torch.compile's caches reset")
    _COMPILED_FOR[0] = weakref.ref(model)


class AdaptiveBatches:
    """Runs groups of items in batches of `size`; on CUDA out-of-memory it halves `size` and
    retries the same items (a batch's rows are only returned after it succeeded, so nothing is
    lost or repeated). The smaller size is kept for later batches and groups.

    >>> ab = AdaptiveBatches(4)
    >>> [len(b) for b in ab.run([list(range(10))], lambda batch: batch)]
    [4, 4, 2]
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        self.size = size

    def run(self, groups: list[list], fn: Callable[[list], list]) -> Iterator[list]:
        for group in groups:
            start = 0
            while start < len(group):
                batch = group[start:start + self.size]
                try:
                    rows = fn(batch)
                except torch.cuda.OutOfMemoryError:
                    if self.size == 1:
                        raise
                    oom = True
                else:
                    oom = False
                if oom:  # outside `except`, so the traceback's tensors are already freed
                    self.size = max(1, self.size // 2)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    log.warning("CUDA out of memory at batch size %d; retrying with %d",
                                len(batch), self.size)
                    continue
                start += len(batch)
                yield rows
