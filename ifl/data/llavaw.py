"""PALO multilingual LLaVA-Bench-in-the-Wild ("LLaVAW") as task rows.

Source: `floschne/multilingual-llava-bench-in-the-wild` (parquet mirror of
MBZUAI/multilingual-llava-bench-in-the-wild), ten splits named by language (`english`,
`chinese`, ...), 60 questions each about 24 images. The same `question_id` in every split is
the same question translated, so `parallel_id = llavaw-<question_id>`.

description = `image_caption`, the dense human caption of LLaVA-Bench, which PALO translated
with the questions [I: the non-English context files are larger than the English one], so
`description_lang` is the split's language. reference = `gpt4_answer`.

>>> import tempfile, pathlib; from ifl.smoke.fixtures import write_llavaw
>>> tasks = load_llavaw(write_llavaw(pathlib.Path(tempfile.mkdtemp())), langs=["en", "ur"],
...                     check_counts=False)
>>> tasks[["task_id", "parallel_id", "lang"]].values.tolist()[:3]
[['llavaw-en-0', 'llavaw-0', 'en'], ['llavaw-en-1', 'llavaw-1', 'en'], ['llavaw-ur-0', 'llavaw-0', 'ur']]
"""
from __future__ import annotations

import os
from typing import Sequence

import pandas as pd

from ifl.data import hub
from ifl.data.languages import LANGUAGES, get as get_language
from ifl.data.schema import tasks_frame

LLAVAW_LANGUAGES = tuple(lang.iso for lang in LANGUAGES.values() if lang.palo_split)
LLAVAW_COLUMNS = ("image_id", "image", "image_caption", "question_id", "question",
                  "question_category", "gpt4_answer")


def load_llavaw(source: str | os.PathLike | None = None, *, revision: str | None = None,
                langs: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
                token: str | None = None, check_counts: bool = True) -> pd.DataFrame:
    """LLaVAW tasks in the `ifl.data.schema` layout; `langs` = ISO codes (default all ten).
    Extra columns: category (conv / detail / complex), image_id, question_id."""
    spec = hub.source_spec("llavaw")
    langs = list(LLAVAW_LANGUAGES if langs is None else langs)
    for iso in langs:
        if not get_language(iso).palo_split:
            raise ValueError(f"LLaVAW has no {iso!r} split; its languages: {', '.join(LLAVAW_LANGUAGES)}")
    data = hub.load_hub_dataset(spec, source, revision=revision, cache_dir=cache_dir, token=token)

    images: dict[str, bytes | None] = {}  # the 24 images recur in every split: keep one copy each
    rows, counts = [], {}
    for iso in langs:
        split = get_language(iso).palo_split
        if split in data:
            hub.require_columns(spec, data[split].column_names, LLAVAW_COLUMNS, split)
        records = data[split].to_list() if split in data else []
        counts[iso] = len(records)
        for r in records:
            image = images.setdefault(r["image_id"], hub.image_bytes(r["image"]))
            rows.append(dict(task_id=f"llavaw-{iso}-{r['question_id']}",
                             parallel_id=f"llavaw-{r['question_id']}", benchmark="llavaw",
                             lang=iso, question=r["question"], image=image,
                             description=r["image_caption"], description_lang=iso,
                             reference=r["gpt4_answer"], category=r["question_category"],
                             image_id=r["image_id"], question_id=int(r["question_id"])))
    if check_counts:
        hub.check_counts(spec, counts, where=str(source or spec.hub_id))
    tasks = tasks_frame(rows, source="llavaw")
    tasks.attrs["sources"] = [hub.provenance(spec, source, revision)]
    return tasks
