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


BREAK = {"act": "break"}
# Text-only conversations in LLaVA-1.5's mix665k: ShareGPT, ~40k of ~665k records
# (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning": the data mixture)
MIX665K_TEXT_ONLY_SHARE = 40_000 / 665_298


def text_only_record(i: int, seed: int, lang: str) -> dict:
    """Stage-2 text-only record i (a ShareGPT-like conversation: no `image` key, as in mix665k):
    a scene described in words and 1-2 questions about it, asked and answered in `lang`.

    >>> rec = text_only_record(0, seed=0, lang="de")
    >>> "image" in rec, rec["lang"], rec["conversations"][0]["value"].count("<image>")
    (False, 'de', 0)
    """
    rng = random.Random(f"text-only:{seed}:{i}")
    scene = sample_scene(rng, f"txt-{i:06d}")
    turns: list[list[dict]] = []
    for k, qtype in enumerate(rng.sample(content.QUESTION_TYPES, rng.randint(1, 2))):
        question, answer, _ = content.short_qa(scene, qtype, rng)
        lead = content.description(scene) + [BREAK] if k == 0 else []
        turns += [lead + question + [HINT], answer]
    record = make_record(f"txt-{i:06d}", "", scene, turns, lang)
    del record["image"]
    return record


def text_only_languages(n: int, non_english_share: float, langs: list[str], seed: int) -> list[str]:
    """Languages of `n` text-only records: `non_english_share` of them (rounded) spread evenly
    over the non-English `langs`, the rest English; shuffled with `seed`.

    >>> sorted(text_only_languages(4, 0.5, ["en", "de", "zh"], seed=0))
    ['de', 'en', 'en', 'zh']
    """
    if not 0.0 <= non_english_share <= 1.0:
        raise ValueError(f"text-only non-English share must be in [0, 1], got {non_english_share}")
    others = sorted(lang for lang in langs if lang != "en")
    k = round(n * non_english_share) if others else 0
    out = ["en"] * (n - k) + [others[j % len(others)] for j in range(k)]
    random.Random(f"text-only-langs:{seed}").shuffle(out)
    return out


def _write_json(records: list[dict], path: Path) -> Path:
    return write_json_atomic(path, records, indent=None)  # temp file + rename: never half a file


def write_training_data(out_dir: str | os.PathLike, n_caption: int, n_instruct: int, seed: int,
                        image_size: int = 32, text_only_share: float = 0.0,
                        text_only_non_english: float = 0.0,
                        text_only_langs: list[str] | None = None) -> dict[str, Path]:
    """Write captions.json, instruct.json and images/{cap,ins}/NNNNNN.png under `out_dir`.
    Record `image` paths are relative to the returned "images" folder, as in LLaVA.
    `text_only_share` of the `n_instruct` stage-2 records (rounded) are text-only conversations
    (mix665k: MIX665K_TEXT_ONLY_SHARE), `text_only_non_english` of those in the non-English
    `text_only_langs` (default: every lexicon language); they follow the image records.

    >>> import tempfile
    >>> paths = write_training_data(tempfile.mkdtemp(), 2, 2, seed=0)
    >>> sorted(paths), len(json.loads(paths["captions"].read_text()))
    (['captions', 'images', 'instruct'], 2)
    """
    out = Path(out_dir)
    images = out / "images"
    paths = {"images": images}
    if not 0.0 <= text_only_share <= 1.0:
        raise ValueError(f"text_only_share must be in [0, 1], got {text_only_share}")
    n_text = round(n_instruct * text_only_share)
    for name, n, make in (("captions", n_caption, caption_record),
                          ("instruct", n_instruct - n_text, instruct_record)):
        records = [make(i, seed, image_size) for i in range(n)]
        for folder in {str(Path(rec["image"]).parent) for rec in records}:
            (images / folder).mkdir(parents=True, exist_ok=True)
        for rec in records:
            (images / rec["image"]).write_bytes(render_png(rec["scene"]))
        if name == "instruct" and n_text:
            from ifl.data.miniature.lexicon import available_langs
            langs = text_only_languages(n_text, text_only_non_english,
                                        text_only_langs or available_langs(), seed)
            records += [text_only_record(i, seed, lang) for i, lang in enumerate(langs)]
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


CROSSLINGUAL_KINDS: tuple[str, ...] = ("translation_pair", "parallel_paragraph", "crosslingual_qa")


def _context_lang(mix: dict[str, float], lang: str, rng: random.Random) -> str:
    """The other language of a cross-lingual item, drawn by the mix without `lang`: real
    bitext pairs mostly a language with the corpus' dominant one (English for every backbone)."""
    others = sorted(other for other, w in mix.items() if other != lang and w > 0)
    if not others:
        return lang
    return rng.choices(others, weights=[mix[o] for o in others])[0]


def _crosslingual(scene: dict, kind: str, rng: random.Random
                  ) -> tuple[list[dict], list[dict], list[dict], str | None, str]:
    """(context acts, request acts, answer acts, answer_key, question_type) of a cross-lingual
    item: the context is written in one language, request and answer in another.
    - translation_pair: one sentence about one object, then the same sentence in the other
      language (the request "where are the shapes?" asks for exactly that sentence);
    - parallel_paragraph: the scene's whole description, then the same paragraph in the other
      language ("describe in detail");
    - crosslingual_qa: the description in one language, a question about it in the other."""
    if kind == "translation_pair":
        o = rng.choice(scene["objects"])
        sentence = [{"act": "say_pos", "color": o["color"], "shape": o["shape"], "pos": o["pos"]}]
        request = [{"act": "instr_positions", "v": rng.randrange(content.N_VARIANTS)}]
        return sentence, request, sentence, None, kind
    if kind == "parallel_paragraph":
        request = [{"act": "instr_detail", "v": rng.randrange(content.N_VARIANTS)}]
        return content.description(scene), request, content.description(scene), None, kind
    if kind == "crosslingual_qa":
        qtype = rng.choice(content.QUESTION_TYPES)
        question, answer, key = content.short_qa(scene, qtype, rng)
        return content.description(scene), question + [HINT], answer, key, qtype
    raise ValueError(f"unknown cross-lingual kind {kind!r}; known: {', '.join(CROSSLINGUAL_KINDS)}")


def pretraining_corpus(mix: dict[str, float], n: int, seed: int, long_share: float = 0.2,
                       crosslingual_share: float = 0.0,
                       english_reply: dict[str, float] | None = None) -> list[dict]:
    """`n` text-only QA items for LM pretraining, languages in proportion to `mix`.

    Each item is prompt = "<context>\n<question>\n", answer = the answer; train on prompt +
    answer with the loss on the answer only (MINIATURE_NOTES: plain next-token loss on whole
    documents did not learn to answer). Short questions carry the language's single-word hint;
    `long_share` of items are describe-style instructions.

    `crosslingual_share` of the items are cross-lingual, as real web text has them (bitext,
    parallel paragraphs, a page in one language discussed in another; see `_crosslingual`):
    the context is in another language of the mix, question and answer in the item's language,
    so a concept learned in one language is reachable from the others.
    `english_reply[lang]`: share of the items asked in `lang` answered in English, as an
    English-tuned chat LM does (calibration.py derives it from measured reply languages).
    With both at their defaults the corpus is monolingual and identical to before.

    >>> items = pretraining_corpus({"en": 3, "zh": 1}, 4, seed=0)
    >>> sorted(item["lang"] for item in items), sorted(items[0])
    (['en', 'en', 'en', 'zh'], ['answer', 'answer_key', 'context_lang', 'id', 'kind', 'lang', 'prompt', 'question_type', 'reply_lang', 'text'])
    """
    if not 0.0 <= crosslingual_share <= 1.0:
        raise ValueError(f"crosslingual_share must be in [0, 1], got {crosslingual_share}")
    bad = {k: v for k, v in (english_reply or {}).items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"english_reply shares must be in [0, 1], got {bad}")
    counts = _allocate(mix, n)
    order = [lang for lang in sorted(counts) for _ in range(counts[lang])]
    random.Random(f"pretrain-order:{seed}").shuffle(order)
    items = []
    for i, lang in enumerate(order):
        rng = random.Random(f"pretrain:{seed}:{i}")
        # the new mechanisms draw from their own stream: with them off, items are as before
        extra = random.Random(f"pretrain-crosslingual:{seed}:{i}")
        scene = sample_scene(rng, f"pre-{i:06d}")
        context_lang, kind = lang, "monolingual"
        if crosslingual_share > 0 and extra.random() < crosslingual_share:
            kind = extra.choice(CROSSLINGUAL_KINDS)
            context_lang = _context_lang(mix, lang, extra)
            context, question, answer, key, qtype = _crosslingual(scene, kind, rng)
        elif rng.random() < long_share:
            qtype = rng.choice(content.INSTRUCTION_KINDS)
            question, answer = content.instruction(scene, qtype, rng)
            context, key = content.description(scene), None
        else:
            qtype = rng.choice(content.QUESTION_TYPES)
            question, answer, key = content.short_qa(scene, qtype, rng)
            question = question + [HINT]
            context = content.description(scene)
        reply_lang = lang
        share = (english_reply or {}).get(lang, 0.0)
        if lang != "en" and share > 0 and extra.random() < share:
            reply_lang = "en"
        prompt = render_turn(context, context_lang) + "\n" + render_turn(question, lang) + "\n"
        reply = render_turn(answer, reply_lang)
        items.append({"id": f"pre-{i:06d}", "lang": lang, "context_lang": context_lang,
                      "reply_lang": reply_lang, "kind": kind, "prompt": prompt, "answer": reply,
                      "text": prompt + reply, "question_type": qtype, "answer_key": key})
    return items
