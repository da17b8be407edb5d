"""VisIT-Bench (Bitton et al. 2023) as task rows: the English items, and the helper that turns
their machine translations into the other nine languages' rows.

Source: `mlfoundations/VisIT-Bench` (gated: a token of a user who accepted its terms, read by
huggingface_hub from HF_TOKEN), an imagefolder with one split `test` (574 single-image
items). The paper keeps the 525 whose GPT-4 answer human raters marked correct
(`human_ratings_gpt4_correct`), and machine-translated those into ar, bn, zh, de, he, hi, ja,
es, th (appendix D). Translation happens elsewhere (ifl.translate); this module fixes the
ids so that every language's copy of an item shares `parallel_id = visit-<item>`, where
`<item>` is the image file's stem (one item per image in the test split).

question = `instruction`, description = `instruction_conditioned_caption` (written for that
instruction and checked by the raters), reference = `reference_output` (often empty).

>>> import tempfile, pathlib; from ifl.smoke.fixtures import write_visit
>>> en = load_visit(write_visit(pathlib.Path(tempfile.mkdtemp())), check_counts=False)
>>> len(en), en.loc[0, "parallel_id"]
(3, 'visit-1_tested_skill_color_fixture_square')
>>> de = visit_translated_tasks(en, {("question", "de"): ["Welche Farbe?", "Wie viele?", "Weiß?"]})
>>> de.loc[0, ["task_id", "question", "description_lang"]].tolist()
['visit-de-1_tested_skill_color_fixture_square', 'Welche Farbe?', 'en']
"""
from __future__ import annotations

import logging
import os
from pathlib import PurePath
from typing import Mapping, Sequence

import pandas as pd

from ifl.data import hub
from ifl.data.schema import tasks_frame

log = logging.getLogger(__name__)

VISIT_LANGUAGES = ("ar", "bn", "zh", "de", "he", "hi", "ja", "es", "th")  # paper, appendix D
TRANSLATED_FIELDS = ("question", "description", "reference")


def load_visit(source: str | os.PathLike | None = None, *, revision: str | None = None,
               only_correct: bool = True, cache_dir: str | os.PathLike | None = None,
               token: str | None = None, check_counts: bool = True) -> pd.DataFrame:
    """English VisIT-Bench tasks; `only_correct` keeps the rows rated correct (the paper's 525).
    Extra columns: category (instruction_category), image_id (the item), gpt4_prediction."""
    from datasets import Image

    spec = hub.source_spec("visit")
    data = hub.load_hub_dataset(spec, source, revision=revision, split="test",
                                cache_dir=cache_dir, token=token)
    hub.require_columns(spec, data.column_names, ["image", "instruction", "human_ratings_gpt4_correct",
                                                  "instruction_conditioned_caption"], "test")
    if isinstance(data.features.get("image"), Image):
        data = data.cast_column("image", Image(decode=False))  # keep the encoded file bytes

    rows, seen = [], {}
    for r in data:
        if only_correct and not _is_true(r["human_ratings_gpt4_correct"]):
            continue
        item = _item_id(r, seen)
        rows.append(dict(task_id=f"visit-en-{item}", parallel_id=f"visit-{item}", benchmark="visit",
                         lang="en", question=r["instruction"], image=hub.image_bytes(r["image"]),
                         description=_text(r.get("instruction_conditioned_caption")),
                         description_lang="en", reference=_text(r.get("reference_output")),
                         category=r.get("instruction_category"), image_id=item,
                         gpt4_prediction=_text(r.get("gpt4_prediction"))))
    log.info("visit: kept %d of %d test rows%s", len(rows), len(data),
             " (rated correct)" if only_correct else "")
    if check_counts and only_correct:
        hub.check_counts(spec, {"en": len(rows)}, where=str(source or spec.hub_id))
    tasks = tasks_frame(rows, source="visit")
    tasks.attrs["sources"] = [hub.provenance(spec, source, revision)]
    return tasks


def visit_translated_tasks(english: pd.DataFrame,
                           translations: Mapping[tuple[str, str], Sequence[str | None]]) -> pd.DataFrame:
    """The rows of `english` (from `load_visit`) in other languages.

    translations: {(field, lang): texts in the order of `english`}, field one of
    TRANSLATED_FIELDS. Every language needs 'question'; without 'description' the English
    caption is kept (description_lang stays 'en'), without 'reference' the English reference.
    Returns only the translated rows; `pd.concat([english, result])` gives all languages.
    """
    if not (english["benchmark"].eq("visit") & english["lang"].eq("en")).all():
        raise ValueError("visit_translated_tasks needs the English VisIT rows of load_visit")
    for (field, lang), texts in translations.items():
        if field not in TRANSLATED_FIELDS:
            raise ValueError(f"cannot translate field {field!r}; one of {TRANSLATED_FIELDS}")
        if len(texts) != len(english):
            raise ValueError(f"translations[{field!r}, {lang!r}] has {len(texts)} texts for "
                             f"{len(english)} English rows")
        missing = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
        if field == "question" and missing:
            raise ValueError(f"translations['question', {lang!r}] is empty at row {missing[0]} "
                             f"({english['task_id'].iloc[missing[0]]})")

    frames = []
    for lang in dict.fromkeys(lang for _, lang in translations):  # in the order given
        if ("question", lang) not in translations:
            raise ValueError(f"no ('question', {lang!r}) translation: the question must be translated")
        out = english.copy()
        out["lang"] = lang
        out["task_id"] = [f"visit-{lang}-{pid.removeprefix('visit-')}" for pid in english["parallel_id"]]
        out["question"] = list(translations["question", lang])
        if ("description", lang) in translations:
            out["description"] = list(translations["description", lang])
            out["description_lang"] = lang
        if ("reference", lang) in translations:
            out["reference"] = list(translations["reference", lang])
        frames.append(out)
    if not frames:
        return tasks_frame(english.iloc[0:0], source="visit translations")
    return tasks_frame(pd.concat(frames, ignore_index=True), source="visit translations")


def _item_id(record: dict, seen: dict[str, int]) -> str:
    """The image file's stem (one item per image in the hub's test split); a repeated stem
    (not expected) gets a suffix so task ids stay unique."""
    path = (record.get("image") or {}).get("path") or ""
    item = PurePath(path).stem or str(len(seen))
    seen[item] = seen.get(item, 0) + 1
    if seen[item] > 1:
        log.warning("visit: image %s is used by %d rows; numbering the repeats", item, seen[item])
        item = f"{item}-{seen[item]}"
    return item


def _is_true(value) -> bool:
    """Ratings are bools in the hub's metadata, 'TRUE'/'FALSE' strings in the CSV copies."""
    return value is True or str(value).strip().lower() == "true"


def _text(value) -> str | None:
    """None for missing or blank cells (CSV gives NaN / None / '')."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value).strip() or None
