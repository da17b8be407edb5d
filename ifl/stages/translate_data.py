"""Notebook 01: the evaluation tasks and the training data translated into Chinese and German.

Paper world (§3.1, Tables 1-2, appendix D, §4.1): MaXM and PALO LLaVA-Bench come multilingual
from the hub; VisIT-Bench comes in English (the 525 items rated correct) and is machine-translated
into the paper's nine languages (the paper used Azure, `visit_translator` chooses); MultiQ (text
only) is optional. Training data: LCS-558K and mix665k translated into Chinese and German with
NLLB. Every translation goes through a `TranslationStore` under the stage folder, so a killed run
continues where it stopped and nothing is translated twice.

Miniature world: `shapes_vqa` (short answers, like MaXM) and `shapes_describe` (long answers, like
LLaVA-Bench / VisIT) in every task language; English stage-1 captions and stage-2 conversations
(LCS-558K / mix665k stand-ins); and their Chinese and German versions made by re-rendering each
record's meaning in the target language, with an error rate standing in for NLLB's noise.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd

from ifl import paper
from ifl.data.languages import LANGUAGES
from ifl.data.llava_training import MIX665K_FILE, PRETRAIN_FILE, load_llava_mix665k, load_llava_pretrain
from ifl.data.llavaw import load_llavaw
from ifl.data.maxm import load_maxm
from ifl.data.miniature import (gold_language, make_tasks, rerender_file, rerender_records,
                                write_training_data)
from ifl.data.multiq import load_multiq
from ifl.data.schema import tasks_frame
from ifl.data.visit import load_visit
from ifl.params_schema import TranslateData
from ifl.stage import write_json_atomic
from ifl.translate import AzureTranslator, NLLBTranslator, TranslationStore, Translator
from ifl.translate import translate_conversations, translate_task_fields

log = logging.getLogger(__name__)
ERROR_RATES = [0.0, 0.05, 0.1, 0.2, 0.4]  # the error-rate table of the miniature


def build_tasks(p: TranslateData, world: str, languages: list[str], *, seed: int,
                translators: "TranslatorFactory", store: TranslationStore) -> pd.DataFrame:
    """Every evaluation task of the world in `languages`, one validated frame."""
    if world == "paper":
        return paper_tasks(p, languages, translators, store)
    return miniature_tasks(p, languages, seed)


def build_training_data(p: TranslateData, world: str, out_dir: Path, *, seed: int,
                        translators: "TranslatorFactory", store: TranslationStore) -> dict:
    """The English training JSONs and one translated copy per training language, as a manifest
    {lang: {"pretrain": path, "instruct": path}} (miniature: plus "image_folder")."""
    if world == "paper":
        return paper_training_data(p, out_dir, translators, store)
    return miniature_training_data(p, out_dir, seed)


def task_counts(tasks: pd.DataFrame) -> pd.DataFrame:
    """Tasks per language x benchmark, with a total column."""
    counts = tasks.groupby(["lang", "benchmark"]).size().unstack(fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return counts


def example_item(tasks: pd.DataFrame) -> pd.DataFrame:
    """The tasks of one parallel item with an image, in every language it has (the one with
    the most languages)."""
    with_image = tasks[tasks["image"].notna()]
    example_id = with_image["parallel_id"].value_counts().idxmax()
    return tasks[tasks["parallel_id"] == example_id]


def read_training_records(manifest: dict) -> dict[str, dict[str, list]]:
    """{lang: {part: records}} of a manifest."""
    import json

    return {lang: {part: json.loads(Path(path).read_text(encoding="utf-8")) for part, path in parts.items()}
            for lang, parts in manifest.items() if lang not in ("image_folder", "image_folders")}


def first_conversation_side_by_side(records: dict[str, dict[str, list]]) -> pd.DataFrame:
    """The turns of the first English instruct record beside its translations."""
    first_id = records["en"]["instruct"][0]["id"]
    side_by_side = {}
    for lang, parts in records.items():
        match = [r for r in parts["instruct"] if r["id"] == first_id]
        if match:
            side_by_side[lang] = [turn["value"] for turn in match[0]["conversations"]]
    return pd.DataFrame(side_by_side)


def summary(tasks: pd.DataFrame, records: dict[str, dict[str, list]]) -> tuple[str, dict]:
    """(headline, metrics) of the stage."""
    facts = {"tasks": len(tasks), "languages": int(tasks["lang"].nunique()),
             "benchmarks": sorted(tasks["benchmark"].unique()),
             "training_records": {lang: {part: len(r) for part, r in parts.items()}
                                  for lang, parts in records.items()}}
    headline = (f"{len(tasks):,} tasks in {facts['languages']} languages over {len(facts['benchmarks'])} "
                f"benchmarks; training data in {', '.join(records)} "
                f"({sum(len(r) for r in records['en'].values()):,} English records)")
    return headline, facts


# --- miniature world ----------------------------------------------------------------------

def miniature_tasks(p: TranslateData, languages: list[str], seed: int) -> pd.DataFrame:
    """Parallel tasks of both miniature benchmarks in `languages`."""
    return make_tasks(p.mini_scenes, langs=languages, seed=seed, description_lang=p.description_lang,
                      image_size=p.mini_image_size)


def miniature_training_data(p: TranslateData, out_dir: Path, seed: int) -> dict:
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


# --- paper world ---------------------------------------------------------------------------

TranslatorFactory = Callable[[str], Translator]


def translator_factory(p: TranslateData, device: str) -> TranslatorFactory:
    """kind ('nllb' | 'azure') -> translator, built once on first use (NLLB weights are GBs)."""
    built: dict[str, Translator] = {}

    def get(kind: str) -> Translator:
        if kind not in built:
            built[kind] = (AzureTranslator() if kind == "azure" else NLLBTranslator(
                p.nllb_model, revision=p.nllb_revision, device=device,
                max_new_tokens=p.translate_max_new_tokens, num_beams=p.translate_num_beams))
        return built[kind]
    return get


def paper_tasks(p: TranslateData, languages: list[str], translators: TranslatorFactory,
                store: TranslationStore) -> pd.DataFrame:
    """All evaluation tasks of the selected benchmarks in `languages`, one validated frame."""
    # Load the description language too, so a fixed `description_lang` can borrow from it.
    wanted = set(languages) | ({p.description_lang} - {"query"})
    parts = []
    if "maxm" in p.benchmarks and (langs := _covered(wanted, "maxm_split")):
        parts.append(load_maxm(p.maxm_source, revision=p.maxm_revision, langs=langs,
                               description=p.maxm_description, description_lang=p.description_lang,
                               xm3600_source=p.xm3600_source, xm3600_revision=p.xm3600_revision))
    if "llavaw" in p.benchmarks and (langs := _covered(wanted, "palo_split")):
        parts.append(load_llavaw(p.llavaw_source, revision=p.llavaw_revision, langs=langs))
    if "visit" in p.benchmarks:
        english = load_visit(p.visit_source, revision=p.visit_revision)
        targets = [lang for lang in p.visit_languages if lang in wanted and lang != "en"]
        parts.append(translate_task_fields(english, targets, translators(p.visit_translator),
                                           store, fields=("question", "description"),
                                           on_error="drop", batch_size=p.translate_batch_size))
    if "multiq" in p.benchmarks:
        parts.append(load_multiq(p.multiq_source, revision=p.multiq_revision, langs=sorted(wanted)))
    if not parts:
        raise ValueError(f"no tasks: none of the benchmarks {p.benchmarks} covers {languages}")
    tasks = pd.concat(parts, ignore_index=True)
    if p.description_lang != "query":
        tasks = describe_in(tasks, p.description_lang)
    return tasks_frame(tasks[tasks["lang"].isin(languages)], source="01_translate_data tasks")


def describe_in(tasks: pd.DataFrame, lang: str) -> pd.DataFrame:
    """Replace each task's description by its parallel task's description in `lang` (the
    sensitivity check of docs/design.md); tasks with no parallel in `lang` keep theirs (logged)."""
    donors = tasks[tasks["lang"] == lang].drop_duplicates("parallel_id").set_index("parallel_id")
    has = tasks["parallel_id"].isin(donors.index) & (tasks["lang"] != lang)
    out = tasks.copy()
    out.loc[has, "description"] = tasks.loc[has, "parallel_id"].map(donors["description"])
    out.loc[has, "description_lang"] = lang
    kept = (~has & (tasks["lang"] != lang) & tasks["description"].notna()).sum()
    if kept:
        log.warning("%d tasks have no parallel task in %r and keep their own description", kept, lang)
    return out


def paper_training_data(p: TranslateData, out_dir: Path, translators: TranslatorFactory,
                        store: TranslationStore) -> dict[str, dict[str, str]]:
    """English LLaVA-v1.5 training JSONs (first `max_training_records` of each) and their
    translations: {lang: {"pretrain": path, "instruct": path}}, also saved as manifest.json."""
    sources = {"pretrain": (load_llava_pretrain(p.pretrain_source, revision=p.pretrain_revision),
                            PRETRAIN_FILE),
               "instruct": (load_llava_mix665k(p.instruct_source, revision=p.instruct_revision),
                            MIX665K_FILE)}
    manifest: dict[str, dict[str, str]] = {}
    for lang in ["en", *p.training_languages]:
        for part, (records, filename) in sources.items():
            records = records[: p.max_training_records]
            if lang != "en":
                records = translate_conversations(records, lang, translators(p.translator), store,
                                                  batch_size=p.translate_batch_size)
            path = out_dir / lang / filename
            write_json_atomic(path, records, indent=None)
            manifest.setdefault(lang, {})[part] = str(path)
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def paper_counts(tasks: pd.DataFrame) -> pd.DataFrame:
    """Tasks per language, this run beside the paper's Table 2."""
    table2 = paper.table2_tasks_per_language()
    ours = tasks.groupby("lang").size().rename("this_run")
    out = table2.set_index("iso")[["language", "n_tasks"]].rename(columns={"n_tasks": "paper"})
    return out.join(ours, how="outer").fillna({"this_run": 0}).astype({"this_run": int})


def _covered(langs: set[str], column: str) -> list[str]:
    return sorted(lang for lang in langs if getattr(LANGUAGES[lang], column))
