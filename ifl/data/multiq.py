"""MultiQ (Holtermann et al. 2024) as text-only task rows: `caro-holt/MultiQ`, one CSV
(`MultiQ.csv`: id, language, prompt, domain) with the same 200 questions in 137 language
codes. The paper's 14 languages are picked with the `multiq_code` column of languages.csv
(e.g. Chinese is `zh-CN`; the file also has `iw` next to `he`, which is skipped). The same
`id` is the same question, so `parallel_id = multiq-<id>`. No image, no description.

>>> import tempfile, pathlib; from ifl.smoke.fixtures import write_multiq
>>> tasks = load_multiq(write_multiq(pathlib.Path(tempfile.mkdtemp())), langs=["zh"],
...                     check_counts=False)
>>> tasks[["task_id", "parallel_id", "question", "image"]].values.tolist()[0]
['multiq-zh-gpt-1', 'multiq-gpt-1', '法国的首都是哪里？', None]
"""
from __future__ import annotations

import os
from typing import Sequence

import pandas as pd

from ifl.data import hub
from ifl.data.languages import LANGUAGES, get as get_language
from ifl.data.schema import tasks_frame

MULTIQ_LANGUAGES = tuple(lang.iso for lang in LANGUAGES.values() if lang.multiq_code)


def load_multiq(source: str | os.PathLike | None = None, *, revision: str | None = None,
                langs: Sequence[str] | None = None, cache_dir: str | os.PathLike | None = None,
                token: str | None = None, check_counts: bool = True) -> pd.DataFrame:
    """MultiQ tasks for `langs` (ISO codes, default the paper's 14); extra column category
    (the question's domain)."""
    spec = hub.source_spec("multiq")
    langs = list(MULTIQ_LANGUAGES if langs is None else langs)
    code_to_iso = {get_language(iso).multiq_code: iso for iso in langs}
    splits = hub.load_hub_dataset(spec, source, revision=revision, cache_dir=cache_dir, token=token)
    # one CSV and no README `configs`: datasets calls its only split "train"
    data = splits["train"] if "train" in splits else next(iter(splits.values()))
    hub.require_columns(spec, data.column_names, ["id", "language", "prompt", "domain"])
    rows, counts = [], dict.fromkeys(langs, 0)
    for r in data:
        iso = code_to_iso.get(r["language"])
        if iso is None or not (r["prompt"] or "").strip():
            continue
        counts[iso] += 1
        rows.append(dict(task_id=f"multiq-{iso}-{r['id']}", parallel_id=f"multiq-{r['id']}",
                         benchmark="multiq", lang=iso, question=r["prompt"], image=None,
                         description=None, description_lang=None, reference=None,
                         category=r["domain"]))
    if check_counts:
        hub.check_counts(spec, counts, where=str(source or spec.hub_id))
    tasks = tasks_frame(rows, source="multiq")
    tasks.attrs["sources"] = [hub.provenance(spec, source, revision)]
    return tasks
