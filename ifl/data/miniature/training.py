"""Training data of the miniature world, in LLaVA-1.5's own JSON schemas, and LM pretraining items.

- captions (stage 1, like LCS-558K `blip_laion_cc_sbu_558k.json`): one turn pair,
  "<instruction>\\n<image>" -> short caption, English;
- instruct (stage 2, like `llava_v1_5_mix665k.json`): "<image>" in the first human turn only;
  half the records are VQA-style (1-3 short questions, each with LLaVA's "Answer the question
  using a single word or phrase." line), half LLaVA-Instruct-style (a long answer, sometimes
  followed by a short question), English.
Each record also carries `scene` (the scene graph), `content` (the acts of every turn, parallel to
`conversations`) and `lang`, so rerender.py can write it in any language.

>>> rec = instruct_record(0, seed=0)
>>> rec["conversations"][0]["value"].startswith("<image>\\n"), len(rec["content"]) == len(rec["conversations"])
(True, True)
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

from ifl.data.miniature import content
from ifl.data.miniature.render import render_turn
from ifl.data.miniature.scenes import render_png, sample_scene
from ifl.data.miniature.tasks import check_langs
from ifl.stage import write_json_atomic

IMAGE = {"act": "image"}
HINT = {"act": "hint_short"}
# Language mixes standing in for the paper's backbones (params files may give their own):
# Vicuna/Llama-2 saw mostly English; Yi English and Chinese; LeoLM English and German.
BACKBONE_MIXES: dict[str, dict[str, float]] = {
    "vicuna": {"en": 0.75, "de": 0.05, "zh": 0.05, "ru": 0.05, "hi": 0.05, "ar": 0.05},
    "yi": {"en": 0.45, "zh": 0.35, "de": 0.05, "ru": 0.05, "hi": 0.05, "ar": 0.05},
    "leo": {"en": 0.45, "de": 0.35, "zh": 0.05, "ru": 0.05, "hi": 0.05, "ar": 0.05},
}


def make_record(record_id: str, image: str, scene: dict, turns: list[list[dict]],
                lang: str = "en") -> dict:
    """A LLaVA conversation record; turns alternate human, gpt."""
    conversations = [{"from": "human" if k % 2 == 0 else "gpt", "value": render_turn(t, lang)}
                     for k, t in enumerate(turns)]
    return {"id": record_id, "image": image, "conversations": conversations, "lang": lang,
            "scene": scene, "content": turns}


def caption_record(i: int, seed: int, image_size: int = 32) -> dict:
    """Stage-1 record i (depends only on seed and i).

    >>> caption_record(0, seed=0)["conversations"][0]["value"].endswith("\\n<image>")
    True
    """
    rng = random.Random(f"caption:{seed}:{i}")
    scene = sample_scene(rng, f"cap-{i:06d}", size=image_size)
    human = [{"act": "instr_caption", "v": rng.randrange(content.N_VARIANTS)}, IMAGE]
    return make_record(f"cap-{i:06d}", f"cap/{i:06d}.png", scene, [human, content.caption(scene)])


def instruct_record(i: int, seed: int, image_size: int = 32) -> dict:
    """Stage-2 record i (depends only on seed and i)."""
    rng = random.Random(f"instruct:{seed}:{i}")
    scene = sample_scene(rng, f"ins-{i:06d}", size=image_size)
    turns: list[list[dict]] = []
    if rng.random() < 0.5:
        for qtype in rng.sample(content.QUESTION_TYPES, rng.randint(1, 3)):
            question, answer, _ = content.short_qa(scene, qtype, rng)
            turns += [question + [HINT], answer]
    else:
        question, answer = content.instruction(scene, rng.choice(content.INSTRUCTION_KINDS), rng)
        turns += [question, answer]
        if rng.random() < 0.5:
            question, answer, _ = content.short_qa(scene, rng.choice(content.QUESTION_TYPES), rng)
            turns += [question + [HINT], answer]
    turns[0] = [IMAGE] + turns[0]
    return make_record(f"ins-{i:06d}", f"ins/{i:06d}.png", scene, turns)


def _write_json(records: list[dict], path: Path) -> Path:
    return write_json_atomic(path, records, indent=None)  # temp file + rename: never half a file


def write_training_data(out_dir: str | os.PathLike, n_caption: int, n_instruct: int, seed: int,
                        image_size: int = 32) -> dict[str, Path]:
    """Write captions.json, instruct.json and images/{cap,ins}/NNNNNN.png under `out_dir`.
    Record `image` paths are relative to the returned "images" folder, as in LLaVA.

    >>> import tempfile
    >>> paths = write_training_data(tempfile.mkdtemp(), 2, 2, seed=0)
    >>> sorted(paths), len(json.loads(paths["captions"].read_text()))
    (['captions', 'images', 'instruct'], 2)
    """
    out = Path(out_dir)
    images = out / "images"
    paths = {"images": images}
    for name, n, make in (("captions", n_caption, caption_record),
                          ("instruct", n_instruct, instruct_record)):
        records = [make(i, seed, image_size) for i in range(n)]
        for folder in {str(Path(rec["image"]).parent) for rec in records}:
            (images / folder).mkdir(parents=True, exist_ok=True)
        for rec in records:
            (images / rec["image"]).write_bytes(render_png(rec["scene"]))
        paths[name] = _write_json(records, out / f"{name}.json")
    return paths


def _allocate(mix: dict[str, float], n: int) -> dict[str, int]:
    """Exact item counts per language: largest remainder of n * weight / total."""
    if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"language mix needs non-negative weights with a positive sum, got {mix}")
    check_langs(list(mix), "language mix")
    total = sum(mix.values())
    raw = {lang: n * w / total for lang, w in mix.items()}
    counts = {lang: math.floor(x) for lang, x in raw.items()}
    by_remainder = sorted(mix, key=lambda lang: (-(raw[lang] - counts[lang]), lang))
    for lang in by_remainder[:n - sum(counts.values())]:
        counts[lang] += 1
    return counts


def pretraining_corpus(mix: dict[str, float], n: int, seed: int,
                       long_share: float = 0.2) -> list[dict]:
    """`n` text-only QA items for LM pretraining, languages in proportion to `mix`.

    Each item is one language throughout: prompt = "<description>\\n<question>\\n", answer = the
    answer; train on prompt + answer with the loss on the answer only (MINIATURE_NOTES: plain
    next-token loss on whole documents did not learn to answer). Short questions carry the
    language's single-word hint; `long_share` of items are describe-style instructions.

    >>> items = pretraining_corpus({"en": 3, "zh": 1}, 4, seed=0)
    >>> sorted(item["lang"] for item in items), sorted(items[0])
    (['en', 'en', 'en', 'zh'], ['answer', 'answer_key', 'id', 'lang', 'prompt', 'question_type', 'text'])
    """
    counts = _allocate(mix, n)
    order = [lang for lang in sorted(counts) for _ in range(counts[lang])]
    random.Random(f"pretrain-order:{seed}").shuffle(order)
    items = []
    for i, lang in enumerate(order):
        rng = random.Random(f"pretrain:{seed}:{i}")
        scene = sample_scene(rng, f"pre-{i:06d}")
        if rng.random() < long_share:
            qtype = rng.choice(content.INSTRUCTION_KINDS)
            question, answer = content.instruction(scene, qtype, rng)
            key = None
        else:
            qtype = rng.choice(content.QUESTION_TYPES)
            question, answer, key = content.short_qa(scene, qtype, rng)
            question = question + [HINT]
        prompt = (render_turn(content.description(scene), lang) + "\n"
                  + render_turn(question, lang) + "\n")
        reply = render_turn(answer, lang)
        items.append({"id": f"pre-{i:06d}", "lang": lang, "prompt": prompt, "answer": reply,
                      "text": prompt + reply, "question_type": qtype, "answer_key": key})
    return items
