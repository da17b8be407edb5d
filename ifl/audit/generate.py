"""Chat-templated prompts for the two conditions (and the steered image condition), generated in
left-padded, length-sorted batches and stored as parquet parts: a rerun skips what is stored
(ifl.collect.store, as notebook 03). Generation stops at eos and at the chat template's own
end-of-turn token (`stop_tokens`), which real checkpoints' generation configs often omit."""
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
_PROBE = "ifl-probe-answer"  # a known assistant text: what the template writes after it ends a turn


def _special_tokens(tok) -> list[str]:
    """Every special token of the tokenizer (named ones and added tokens marked special),
    longest first so that a prefix match finds the whole token."""
    named = set(tok.all_special_tokens)
    added = {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special}
    return sorted(named | added, key=len, reverse=True)


def end_of_turn_token(processor) -> str | None:
    """The special token the processor's chat template writes right after an assistant's text
    (`<end_of_turn>`, `<end_of_utterance>`, `<|im_end|>`, `</s>`), found by rendering a
    user/assistant exchange with a known answer; None when the template writes no special token
    there (llava-hf's LLaVA-1.5 template ends the answer with a space).

    Content is tried as a list of parts (processor templates) and then as a plain string
    (tokenizer templates such as Gemma's, which `trim` a string and would print a list's repr)."""
    specials = _special_tokens(processor.tokenizer)
    for as_parts in (True, False):
        def content(text):
            return [{"type": "text", "text": text}] if as_parts else text
        exchange = [{"role": "user", "content": content("?")},
                    {"role": "assistant", "content": content(_PROBE)}]
        try:
            rendered = processor.apply_chat_template(exchange, tokenize=False)
        except Exception:  # jinja raises its own errors for a content form it does not take
            continue
        _, found, after = rendered.rpartition(_PROBE)
        token = next((s for s in specials if after.lstrip().startswith(s)), None) if found else None
        if token:
            return token
    return None


def stop_tokens(processor, generation_config) -> dict[str, int]:
    """{token: id} where greedy generation stops, by id: the generation config's eos (an id or a
    list), the tokenizer's eos, and the chat template's end-of-turn token (`end_of_turn_token`).
    Real chat checkpoints often list eos only (Intel/llava-gemma-2b: `<eos>`, answers end with
    `<end_of_turn>`; Idefics3-8B-Llama3: Llama 3's ends, answers end with `<end_of_utterance>`):
    without the last one replies run to the token limit with invented turns."""
    tok = processor.tokenizer
    eos = getattr(generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tok.eos_token_id}
    turn = end_of_turn_token(processor)
    if turn is not None:
        ids.add(tok.convert_tokens_to_ids(turn))
    ids.discard(None)
    return {tok.convert_ids_to_tokens(i): i for i in sorted(ids)}


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
                   max_new_tokens: int, layer: int | None, stop_ids: list[int]) -> list[dict]:
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
                             pad_token_id=tok.pad_token_id, eos_token_id=stop_ids)
    rows = []
    for it, ids, n_p in zip(items, out[:, width:].tolist(), inputs["attention_mask"].sum(1).tolist()):
        n_new = next((k + 1 for k, t in enumerate(ids) if t in stop_ids), len(ids))
        rows.append(dict(task_id=it.task_id, condition=it.condition, prompt=it.prompt,
                         response=tok.decode(ids[:n_new], skip_special_tokens=True).strip(),
                         n_prompt_tokens=int(n_p), n_new_tokens=n_new, seconds=0.0,
                         batch_size=len(items)))
    return rows


def collect(model, processor, tasks: pd.DataFrame, out: Path, *, model_name: str, remedy: bool,
            layer: int | None, max_new_tokens: int, batch_size: int, precision: str,
            stops: dict[str, int]) -> pd.DataFrame:
    """Every missing response, stored part by part under out/parts/; returns all of them.
    Stored parts are reused only if made with the same model, token limit, steering layer,
    precision (--precision: 4-bit replies differ from bf16 ones) and stop tokens (`stops`, from
    `stop_tokens`): a rerun with another of these refuses (ResponseConflictError) rather than
    mixing rows."""
    folder = out / PARTS
    folder.mkdir(parents=True, exist_ok=True)
    check_settings(folder, folder, dict(model=model_name, max_new_tokens=max_new_tokens,
                                        steering_layer=layer if remedy else None,
                                        precision=precision, stop_tokens=sorted(stops)))
    done = set(map(tuple, load_responses(out, PARTS)[["task_id", "condition"]].itertuples(index=False)))
    todo = [it for it in build_items(tasks, processor, remedy) if (it.task_id, it.condition) not in done]
    tok = processor.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    langs = dict(zip(tasks["task_id"], tasks["lang"]))
    writer = PartWriter(folder)
    for rows in AdaptiveBatches(batch_size).run(_groups(todo), lambda b: generate_batch(
            model, processor, b, langs, max_new_tokens=max_new_tokens, layer=layer,
            stop_ids=sorted(stops.values()))):
        writer.write([{"model": model_name, **r} for r in rows])  # one part per batch: resumable
    return load_responses(out, PARTS)
