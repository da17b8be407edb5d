"""Notebook 01, miniature world: evaluation tasks and training data, "translated" by re-rendering.

The miniature stands in for the paper's data: `shapes_vqa` (short answers, like MaXM) and
`shapes_describe` (long answers, like LLaVA-Bench / VisIT) in every task language; English
stage-1 captions and stage-2 conversations (LCS-558K / mix665k stand-ins); and their Chinese and
German versions made by re-rendering each record's meaning in the target language, with an
error rate standing in for NLLB's translation noise.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ifl.data.miniature import (gold_language, make_tasks, rerender_file, rerender_records,
                                write_training_data)
from ifl.params_schema import TranslateData
from ifl.stage import write_json_atomic


def build_tasks(p: TranslateData, languages: list[str], seed: int) -> pd.DataFrame:
    """Parallel tasks of both miniature benchmarks in `languages`."""
    return make_tasks(p.mini_scenes, langs=languages, seed=seed, description_lang=p.description_lang,
                      image_size=p.mini_image_size)


def build_training_data(p: TranslateData, out_dir: Path, seed: int) -> dict:
    """English training JSONs plus one re-rendered copy per training language.

    Returns (and saves as manifest.json) {lang: {"pretrain": path, "instruct": path},
    "image_folder": path}; image paths inside the records are relative to image_folder.
    """
    english = write_training_data(out_dir / "en", p.mini_caption_records, p.mini_instruct_records,
                                  seed=seed, image_size=p.mini_image_size,
                                  text_only_share=p.mini_text_only_share,
                                  text_only_non_english=p.mini_text_only_non_english)
    manifest: dict = {"image_folder": str(english["images"]),
                      "en": {"pretrain": str(english["captions"]), "instruct": str(english["instruct"])}}
    for lang in p.training_languages:
        if lang == "en":
            continue
        for part, source in (("pretrain", english["captions"]), ("instruct", english["instruct"])):
            path = rerender_file(source, out_dir / lang / source.name, lang, p.mini_error_rate, seed,
                                 noise=p.mini_noise_model)
            manifest.setdefault(lang, {})[part] = str(path)
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def error_rate_effect(records: list[dict], lang: str, rates: list[float], seed: int) -> pd.DataFrame:
    """What the translation-noise knob does: per error rate, the share of sentences corrupted
    (by kind) and the share of answer turns whose exact gold language is still `lang`."""
    rows = []
    for rate in rates:
        out = rerender_records(records, lang, rate, seed)
        n_sentences = sum(act["act"] != "image" for r in out for turn in r["content"] for act in turn)
        kinds = pd.Series([c["kind"] for r in out for c in r["translation"]["corruptions"]],
                          dtype="object")
        answers = [t["value"] for r in out for t in r["conversations"] if t["from"] == "gpt"]
        rows.append({"error_rate": rate,
                     "corrupted_share": len(kinds) / max(n_sentences, 1),
                     **{f"{k}_share": v / max(n_sentences, 1) for k, v in kinds.value_counts().items()},
                     "answers_in_target_language": sum(gold_language(a) == lang for a in answers)
                     / max(len(answers), 1)})
    return pd.DataFrame(rows).fillna(0.0)
