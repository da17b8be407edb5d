"""Notebook 01, paper world: the evaluation tasks and the translated LLaVA training data.

Tasks (§3.1, Tables 1-2): MaXM and PALO LLaVA-Bench come multilingual from the hub; VisIT-Bench
comes in English (the 525 items rated correct) and is machine-translated into the paper's nine
languages (appendix D; the paper used Azure, `visit_translator` chooses); MultiQ (text only) is
optional. Training data (§4.1): LCS-558K and mix665k translated into Chinese and German with
NLLB. Every translation goes through a `TranslationStore` under the stage folder, so a killed
run continues where it stopped and nothing is translated twice.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd

from ifl.data.languages import LANGUAGES
from ifl.data.llava_training import MIX665K_FILE, PRETRAIN_FILE, load_llava_mix665k, load_llava_pretrain
from ifl.data.llavaw import load_llavaw
from ifl.data.maxm import load_maxm
from ifl.data.multiq import load_multiq
from ifl.data.schema import tasks_frame
from ifl.data.visit import load_visit
from ifl.params_schema import TranslateData
from ifl.stage import write_json_atomic
from ifl.translate import AzureTranslator, NLLBTranslator, TranslationStore, Translator
from ifl.translate import translate_conversations, translate_task_fields

log = logging.getLogger(__name__)
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


def build_tasks(p: TranslateData, languages: list[str], translators: TranslatorFactory,
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
    sensitivity check of DESIGN.md); tasks with no parallel in `lang` keep theirs (logged)."""
    donors = tasks[tasks["lang"] == lang].drop_duplicates("parallel_id").set_index("parallel_id")
    has = tasks["parallel_id"].isin(donors.index) & (tasks["lang"] != lang)
    out = tasks.copy()
    out.loc[has, "description"] = tasks.loc[has, "parallel_id"].map(donors["description"])
    out.loc[has, "description_lang"] = lang
    kept = (~has & (tasks["lang"] != lang) & tasks["description"].notna()).sum()
    if kept:
        log.warning("%d tasks have no parallel task in %r and keep their own description", kept, lang)
    return out


def build_training_data(p: TranslateData, out_dir: Path, translators: TranslatorFactory,
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
    from importlib import resources
    table2 = pd.read_csv(resources.files("ifl.paper").joinpath("table2_tasks_per_language.csv"))
    ours = tasks.groupby("lang").size().rename("this_run")
    out = table2.set_index("iso")[["language", "n_tasks"]].rename(columns={"n_tasks": "paper"})
    return out.join(ours, how="outer").fillna({"this_run": 0}).astype({"this_run": int})


def _covered(langs: set[str], column: str) -> list[str]:
    return sorted(lang for lang in langs if getattr(LANGUAGES[lang], column))
