"""Chat-templated prompts for the two conditions (and the steered image condition), generated in
left-padded, length-sorted batches and stored as parquet parts: a rerun skips what is stored
(ifl.collect.store, as notebook 03)."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch

from ifl.collect.engine import AdaptiveBatches, Item, decode_image, order
from ifl.collect.store import PartWriter, check_settings, load_responses
from ifl.remedy import answer_in

STEERED = "image_steered"  # the image condition under answer_in(query language)
PARTS = "parts"            # out/parts/: the store's folder (its "model" key)


def chat_prompt(processor, question: str, *, image: bool, description: str | None = None) -> str:
    """The user turn as the processor's chat template renders it; the text condition puts the
    description where the image would be."""
    if image:
        content = [{"type": "image"}, {"type": "text", "text": question}]
    else:
        text = question if description is None else f"{description}\n{question}"
        content = [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)


def adds_special_tokens(tok, prompt: str) -> bool:
    """Whether the tokenizer adds its special tokens (BOS) to a rendered prompt: not when the
    chat template already wrote BOS (Gemma 3, Idefics3, Aya Vision), yes when it did not
    (llava-hf's LLaVA-1.5 template: the model card's processor(text=prompt) adds BOS)."""
    bos = getattr(tok, "bos_token", None)
    return not (bos and prompt.startswith(bos))


def build_items(tasks: pd.DataFrame, processor, remedy: bool) -> list[Item]:
    items = []
    for row in tasks.itertuples(index=False):
        if row.image is None or (isinstance(row.image, float) and pd.isna(row.image)):
            continue
        if row.description is None or pd.isna(row.description):
            raise ValueError(f"task {row.task_id!r} has no description for the text condition")
        with_image = chat_prompt(processor, row.question, image=True)
        items.append(Item(row.task_id, "image", with_image, bytes(row.image)))
        items.append(Item(row.task_id, "text",
                          chat_prompt(processor, row.question, image=False,
                                      description=row.description), None))
        if remedy:
            items.append(Item(row.task_id, STEERED, with_image, bytes(row.image)))
    tok = processor.tokenizer
    special = adds_special_tokens(tok, items[0].prompt) if items else False
    for it, ids in zip(items, tok([it.prompt for it in items], add_special_tokens=special)["input_ids"]):
        it.length = len(ids)
    return items


def _groups(items: list[Item]) -> list[list[Item]]:
    """Batches never mix conditions (image rows need pixels; steered rows need the hooks)."""
    out = order([it for it in items if it.condition != STEERED])
    steered = [it for it in items if it.condition == STEERED]
    return out + ([sorted(steered, key=lambda it: (-it.length, it.task_id))] if steered else [])


def generate_batch(model, processor, items: list[Item], langs: dict[str, str], *,
                   max_new_tokens: int, layer: int | None) -> list[dict]:
    tok = processor.tokenizer
    images = [[decode_image(it.image)] for it in items] if items[0].image is not None else None
    inputs = processor(text=[it.prompt for it in items], images=images, return_tensors="pt",
                       padding=True, add_special_tokens=adds_special_tokens(tok, items[0].prompt))
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    width = inputs["input_ids"].shape[1]
    steer = (answer_in(model, processor, [langs[it.task_id] for it in items], layer=layer)
             if items[0].condition == STEERED else nullcontext())
    with torch.inference_mode(), steer:
        out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.eos_token_id}
    rows = []
    for it, ids, n_p in zip(items, out[:, width:].tolist(), inputs["attention_mask"].sum(1).tolist()):
        n_new = next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))
        rows.append(dict(task_id=it.task_id, condition=it.condition, prompt=it.prompt,
                         response=tok.decode(ids[:n_new], skip_special_tokens=True).strip(),
                         n_prompt_tokens=int(n_p), n_new_tokens=n_new, seconds=0.0,
                         batch_size=len(items)))
    return rows


def collect(model, processor, tasks: pd.DataFrame, out: Path, *, model_name: str, remedy: bool,
            layer: int | None, max_new_tokens: int, batch_size: int) -> pd.DataFrame:
    """Every missing response, stored part by part under out/parts/; returns all of them."""
    folder = out / PARTS
    folder.mkdir(parents=True, exist_ok=True)
    check_settings(folder, folder, dict(model=model_name, max_new_tokens=max_new_tokens,
                                        steering_layer=layer if remedy else None))
    done = set(map(tuple, load_responses(out, PARTS)[["task_id", "condition"]].itertuples(index=False)))
    todo = [it for it in build_items(tasks, processor, remedy) if (it.task_id, it.condition) not in done]
    tok = processor.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    langs = dict(zip(tasks["task_id"], tasks["lang"]))
    writer = PartWriter(folder)
    for rows in AdaptiveBatches(batch_size).run(_groups(todo), lambda b: generate_batch(
            model, processor, b, langs, max_new_tokens=max_new_tokens, layer=layer)):
        writer.write([{"model": model_name, **r} for r in rows])  # one part per batch: resumable
    return load_responses(out, PARTS)
