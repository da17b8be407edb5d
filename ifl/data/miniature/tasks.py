"""Evaluation tasks of the miniature world, in the project's task schema (ifl.data.schema).

Two benchmarks mirror the paper's two kinds:
- `shapes_vqa`: short-answer questions (colour, shape, count, exist, position), like MaXM;
  `reference` is the short answer in the query language.
- `shapes_describe`: long-answer instructions (describe in detail / briefly, name the colours,
  say where the shapes are), like LLaVA-Bench and VisIT; `reference` is the full answer.

One scene gives one item per benchmark; its rendering in each language is one task, and all of
them share `parallel_id`. The `description` that replaces the image always states every fact
(count, colour, shape, position of each object), in the query's language or a fixed one.
Item i depends only on (benchmark, seed, i): a larger `n_scenes` extends a smaller one.

>>> df = make_tasks(2, ["en", "de"], seed=0)
>>> df.groupby("benchmark").size().to_dict()
{'shapes_describe': 4, 'shapes_vqa': 4}
>>> df.loc[0, ["task_id", "parallel_id", "lang", "question_type"]].tolist()
['shapes_vqa-00000-en', 'shapes_vqa-00000', 'en', 'color']
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pandas as pd

from ifl.data.miniature import content
from ifl.data.miniature.lexicon import available_langs
from ifl.data.miniature.render import render_turn
from ifl.data.miniature.scenes import render_png, sample_scene
from ifl.data.schema import tasks_frame

BENCHMARKS: tuple[str, ...] = ("shapes_vqa", "shapes_describe")
DEFAULT_LANGS: tuple[str, ...] = ("en", "de", "zh", "ru", "hi", "ar")


def check_langs(langs: Sequence[str], what: str = "langs") -> None:
    """Raise with the list of available lexicons if a language has none."""
    missing = [lang for lang in langs if lang not in available_langs()]
    if missing:
        raise ValueError(f"{what}: no miniature lexicon for {missing}; available: "
                         f"{', '.join(available_langs())} (add ifl/data/miniature/lexicon/<iso>.yaml)")


def _item(benchmark: str, scene: dict, i: int, rng: random.Random) -> dict:
    """Language-free content of item i: question acts, answer acts, type, answer key."""
    if benchmark == "shapes_vqa":
        qtype = content.QUESTION_TYPES[i % len(content.QUESTION_TYPES)]   # balanced types
        question, answer, key = content.short_qa(scene, qtype, rng)
        return dict(question=question, answer=answer, question_type=qtype, answer_key=key)
    kind = content.INSTRUCTION_KINDS[i % len(content.INSTRUCTION_KINDS)]
    question, answer = content.instruction(scene, kind, rng)
    return dict(question=question, answer=answer, question_type=kind, answer_key=None)


def make_tasks(n_scenes: int, langs: Sequence[str] = DEFAULT_LANGS, seed: int = 0,
               description_lang: str = "query", image_size: int = 32,
               benchmarks: Sequence[str] = BENCHMARKS, short_hint: bool = False) -> pd.DataFrame:
    """Parallel tasks: `n_scenes` items per benchmark, each rendered in every language of `langs`.

    description_lang: "query" (the task's language) or an ISO code (e.g. "en") for all tasks.
    short_hint: append the language's "answer with a single word or phrase" line to
      shapes_vqa questions (as LLaVA-1.5 prompts short-answer VQA); off by default, like MaXM.
    Extra columns: question_type, scene_id, scene (JSON scene graph), answer_key (the
    language-free short answer, e.g. "red", "2", "left"; missing for shapes_describe; check a
    response with `answer_key in concepts(response)`).

    >>> df = make_tasks(1, ["en", "zh"], seed=3, description_lang="en", benchmarks=["shapes_vqa"])
    >>> df["description_lang"].tolist(), df["description"].nunique()
    (['en', 'en'], 1)
    """
    check_langs(langs)
    if description_lang != "query":
        check_langs([description_lang], "description_lang")
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown miniature benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    rows = []
    for benchmark in benchmarks:
        for i in range(n_scenes):
            rng = random.Random(f"{benchmark}:{seed}:{i}")
            parallel_id = f"{benchmark}-{i:05d}"
            scene = sample_scene(rng, parallel_id, size=image_size)
            item = _item(benchmark, scene, i, rng)
            png, scene_json, desc = render_png(scene), json.dumps(scene), content.description(scene)
            question = item["question"]
            if short_hint and benchmark == "shapes_vqa":
                question = question + [{"act": "hint_short"}]
            described = {}   # description per language, rendered once per scene
            for lang in langs:
                dlang = lang if description_lang == "query" else description_lang
                if dlang not in described:
                    described[dlang] = render_turn(desc, dlang)
                rows.append(dict(
                    task_id=f"{parallel_id}-{lang}", parallel_id=parallel_id, benchmark=benchmark,
                    lang=lang, question=render_turn(question, lang), image=png,
                    description=described[dlang], description_lang=dlang,
                    reference=render_turn(item["answer"], lang),
                    question_type=item["question_type"], scene_id=parallel_id, scene=scene_json,
                    answer_key=item["answer_key"]))
    return tasks_frame(rows, source="miniature tasks")
