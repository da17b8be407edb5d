"""Tiny Llama LMs pretrained from scratch: the miniature's Vicuna, Yi and Leo.

Each LM reads chat turns in the `llava_hf` template whose user content is a scene description
followed by a question, exactly the text-only condition of the experiment
(`ifl.prompts.query(t, q, image=False, description=d)`), and is trained with the loss on the
answer only (MINIATURE_NOTES: plain next-token loss on whole documents got stuck). The language
mix of its corpus is what makes it Vicuna-, Yi- or Leo-like (see components.BACKBONES).

    tok = train_tokenizer("runs/x/mini/tokenizer", tokenizer_texts(seed=0))
    path, metrics = pretrain_lm("leo", BACKBONES["leo"], tok, "runs/x/mini/lm-leo",
                                hidden=96, layers=3, steps=600, batch=48, lr=3e-3, seed=0)
    AutoModelForCausalLM.from_pretrained(path)   # a LlamaForCausalLM, as a hub model loads
    metrics["eval"]["de"]  # {'accuracy': ..., 'fidelity': ..., 'n': ...}

Shapes: input_ids, labels, attention_mask [batch, seq]; logits [batch, seq, vocab].
"""
from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ifl.answer_spans import IGNORE, join_pieces, labels_of
from ifl.data.miniature import concepts, gold_language, make_tasks, pretraining_corpus
from ifl.mini.common import fresh_dir, is_done, lr_at, mark_done
from ifl.mini.tokenizer import split_prompt
from ifl.progress import report as report_progress
from ifl.prompts import ChatTemplate, query, segments, template

EVAL_SEED_OFFSET = 10_007   # held-out tasks come from another seed than any training corpus


def encode_chat(tokenizer, pieces: Sequence[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation given as `ifl.prompts.segments` pieces.

    Masked by ifl.answer_spans, the rule LLaVA training (ifl/train/data.py) uses too.

    >>> from ifl.mini.tokenizer import train_tokenizer
    >>> import tempfile
    >>> tok = train_tokenizer(tempfile.mkdtemp(), ["USER: Hi? ASSISTANT: Yes.</s>"], 300)
    >>> ids, labels = encode_chat(tok, [("USER: Hi? ", False), ("ASSISTANT:", False), (" Yes.</s>", True)])
    >>> tok.decode([i for i, l in zip(ids, labels) if l != IGNORE])
    ' Yes.</s>'
    """
    text, spans = join_pieces(pieces)
    enc = tokenizer(text, return_offsets_mapping=True)
    labels = labels_of(enc["input_ids"], enc["offset_mapping"], spans).tolist()
    return enc["input_ids"], labels


def qa_pieces(t: ChatTemplate, description: str, question: str, answer: str) -> list[tuple[str, bool]]:
    """One text-only QA turn pair as segments: user = description + "\\n" + question."""
    return segments(t, [("human", f"{description}\n{question}"), ("gpt", answer)])


def corpus_examples(items: list[dict], tokenizer, t: ChatTemplate, hint_drop: float = 0.0,
                    seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of `pretraining_corpus` items. `hint_drop` of the short-answer items
    lose their one-word hint line (the last line of the question): with the hint on every short
    question, a question without it reads as a describe instruction and gets a long, wrong
    reply, while the miniature's tasks ask without the hint by default (like MaXM)."""
    rng = random.Random(f"hint-drop:{seed}")
    out = []
    for item in items:
        description, question = split_prompt(item["prompt"])
        if item["answer_key"] is not None and rng.random() < hint_drop:
            question = question.rsplit("\n", 1)[0]
        out.append(encode_chat(tokenizer, qa_pieces(t, description, question, item["answer"])))
    return out


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, labels (IGNORE on pads), attention_mask, each [batch, seq]."""
    n = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens; equal to `model(**batch).loss` but the
    output layer runs only where a label is (~5 of ~50 positions: a third of the step time).

    hidden [batch, seq, hidden] -> logits [n_answer_tokens, vocab]
    """
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]          # position p predicts token p + 1
    keep = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def lm_config(tokenizer, hidden: int, layers: int):
    """Llama architecture at toy size: head_dim 32, SwiGLU width 8/3 * hidden, tied embeddings
    (the vocabulary is ~1.7k words; untied output rows would double the parameters), and
    initial weights of std 1/sqrt(hidden) instead of Llama's 0.02: at width 96 the small init
    keeps attention uniform for hundreds of steps, and the LM answers with constant guesses."""
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32 * math.ceil(hidden * 8 / 3 / 32),
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
        num_key_value_heads=max(1, hidden // 32), max_position_embeddings=512,
        tie_word_embeddings=True, initializer_range=hidden ** -0.5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@torch.no_grad()
def answer_text_only(model, tokenizer, rows: Sequence[dict], t: ChatTemplate,
                     batch: int = 128, max_new_tokens: int = 12) -> list[str]:
    """Greedy answers to rows {question, description}: the text-only condition's prompt."""
    model.eval()
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"   # generation continues the right end
    out = []
    try:
        for i in range(0, len(rows), batch):
            prompts = [query(t, r["question"], image=False, description=r["description"])
                       for r in rows[i:i + batch]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return [s.strip() for s in out]


def text_qa_eval(model, tokenizer, langs: Sequence[str], n_scenes: int, seed: int,
                 chat_template: str = "llava_hf", short_hint: bool = True) -> dict[str, dict]:
    """Per language: accuracy (`answer_key in concepts(response)`) and fidelity
    (`gold_language(response) == lang`) on parallel held-out `shapes_vqa` tasks whose description
    is in the query language; `short_hint` appends the one-word hint, as in pretraining."""
    tasks = make_tasks(n_scenes, langs, seed=seed + EVAL_SEED_OFFSET, benchmarks=["shapes_vqa"],
                       short_hint=short_hint)
    rows = tasks.to_dict("records")
    responses = answer_text_only(model, tokenizer, rows, template(chat_template))
    result = {}
    for lang in langs:
        mine = [(r, s) for r, s in zip(rows, responses) if r["lang"] == lang]
        result[lang] = {
            "accuracy": sum(r["answer_key"] in concepts(s) for r, s in mine) / len(mine),
            "fidelity": sum(gold_language(s) == lang for _, s in mine) / len(mine),
            "n": len(mine), "example": mine[0][1]}
    return result


def pretrain_lm(name: str, mix: dict[str, float], tokenizer, out_dir: str | Path, *,
                hidden: int = 96, layers: int = 3, steps: int = 600, batch: int = 48,
                lr: float = 3e-3, seed: int = 0, eval_scenes: int = 60,
                hint_drop: float = 0.3, chat_template: str = "llava_hf", tokenizer_id: str = "",
                crosslingual_share: float = 0.0, english_reply: dict[str, float] | None = None,
                progress: bool = True) -> tuple[Path, dict]:
    """Pretrain (or load the cached) LM `name` on `steps * batch` text-only QA items drawn with
    language shares `mix`; evaluate text-only QA per language of `mix` on `eval_scenes` parallel
    held-out scenes. Saves model, tokenizer, metrics.json and DONE into `out_dir`.
    `tokenizer_id` (e.g. components.tokenizer_id(tok)) joins the cache key, so a retrained
    tokenizer of the same size retrains the LM.
    `crosslingual_share`, `english_reply`: see `ifl.data.miniature.pretraining_corpus`."""
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    settings = {"kind": "lm", "name": name, "mix": mix, "vocab": len(tokenizer),
                "tokenizer": tokenizer_id, "hidden": hidden,
                "layers": layers, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                "eval_scenes": eval_scenes, "hint_drop": hint_drop, "template": chat_template}
    if crosslingual_share or english_reply:   # only then: older builds keep their cache key
        settings.update(crosslingual_share=crosslingual_share, english_reply=english_reply or {})
    if is_done(out_dir, settings):
        return out_dir, json.loads((out_dir / "metrics.json").read_text())
    fresh_dir(out_dir)
    start = time.perf_counter()
    t = template(chat_template)
    corpus = pretraining_corpus(mix, steps * batch, seed, crosslingual_share=crosslingual_share,
                                english_reply=english_reply)
    examples = corpus_examples(corpus, tokenizer, t, hint_drop, seed)
    order = list(range(len(examples)))
    random.Random(f"lm-order:{seed}").shuffle(order)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(lm_config(tokenizer, hidden, layers))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    losses = []
    model.train()
    for step in tqdm(range(steps), desc=f"LM {name}", disable=not progress, mininterval=2):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        chunk = [examples[i] for i in order[step * batch:(step + 1) * batch]]
        loss = answer_loss(model, collate(chunk, tokenizer.pad_token_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        report_progress(f"LM {name}", step + 1, steps)
    train_s = time.perf_counter() - start
    langs = [lang for lang, w in mix.items() if w > 0]
    k = max(1, min(20, steps // 5))
    metrics = {"name": name, "mix": mix, "params": sum(p.numel() for p in model.parameters()),
               "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
               "train_s": round(train_s, 1),
               # as pretrained (with the one-word hint), and as the miniature's tasks ask (without)
               "eval": text_qa_eval(model, tokenizer, langs, eval_scenes, seed, chat_template),
               "eval_nohint": text_qa_eval(model, tokenizer, langs, eval_scenes, seed, chat_template,
                                           short_hint=False)}
    metrics["wall_s"] = round(time.perf_counter() - start, 1)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)   # the LM directory loads like a hub model: weights + tokenizer
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    mark_done(out_dir, settings)
    return out_dir, metrics
