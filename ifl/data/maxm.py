"""MaXM (Changpinyo et al. 2023) as task rows: `floschne/maxm`, one split per language.

MaXM's splits are language codes and Hebrew is `iw`; rows come out with the paper's ISO code
(`he`). Every language has its own images (picked from the region where it is spoken), so
no task is parallel to another: `parallel_id` is the task's own id.

The text that replaces the image (`description`) comes from one of:

* `"maxm_captions"` (default): the row's own `image_captions` (XM3600 captions the mirror
  already joined to each question). The paper says the descriptions "are drawn from the
  respective datasets", and this mirror is by a co-author of the paper; it needs no second
  download. Which language these captions are in is not documented [U]: they are taken to be
  in the query's language (`description_lang` = query language), and a warning is logged when
  a non-Latin-script split gets mostly Latin-script captions (i.e. probably English).
* `"xm3600"`: captions joined on `image_id` from `floschne/xm3600`, split = `description_lang`
  ('query' = the query's language; XM3600 calls Hebrew `he`), falling back to `en` when the
  image has no caption there. The caption language is then known for certain.

>>> import tempfile, pathlib; from ifl.smoke.fixtures import write_maxm
>>> tasks = load_maxm(write_maxm(pathlib.Path(tempfile.mkdtemp())), langs=["he"], check_counts=False)
>>> tasks[["lang", "question", "description", "description_lang"]].iloc[0].tolist()
['he', 'באיזה צבע הריבוע?', 'ריבוע אדום על רקע לבן.', 'he']
"""
from __future__ import annotations

import logging
import os
import unicodedata
from typing import Literal, Sequence

import pandas as pd

from ifl.data import hub
from ifl.data.languages import LANGUAGES, get as get_language
from ifl.data.schema import tasks_frame

log = logging.getLogger(__name__)

MAXM_LANGUAGES = tuple(lang.iso for lang in LANGUAGES.values() if lang.maxm_split)
MAXM_COLUMNS = ("image_id", "image", "image_locale", "image_captions", "question_id", "question",
                "answers")


def load_maxm(source: str | os.PathLike | None = None, *, revision: str | None = None,
              langs: Sequence[str] | None = None,
              description: Literal["maxm_captions", "xm3600"] = "maxm_captions",
              description_lang: str = "query", n_captions: int = 1,
              xm3600_source: str | os.PathLike | None = None, xm3600_revision: str | None = None,
              cache_dir: str | os.PathLike | None = None, token: str | None = None,
              check_counts: bool = True) -> pd.DataFrame:
    """MaXM tasks (one row per question) in the `ifl.data.schema` layout.

    source: hub id (default floschne/maxm at the pinned revision) or a local copy.
    langs: ISO codes to keep (default: all seven MaXM languages).
    description: where the image description comes from (module docstring).
    description_lang: for "xm3600", the caption language: 'query' or a fixed ISO code.
    n_captions: how many captions are joined (with a space) into the description.
    Extra columns: image_id, image_locale, answers (all reference answers), category (None).
    """
    spec = hub.source_spec("maxm")
    langs = list(MAXM_LANGUAGES if langs is None else langs)
    for iso in langs:
        if not get_language(iso).maxm_split:
            raise ValueError(f"MaXM has no {iso!r} split; MaXM languages: {', '.join(MAXM_LANGUAGES)}")
    if description not in ("maxm_captions", "xm3600"):
        raise ValueError(f"description must be 'maxm_captions' or 'xm3600', not {description!r}")
    if n_captions < 1:
        raise ValueError(f"n_captions must be >= 1, not {n_captions}")
    if description == "maxm_captions" and description_lang != "query":
        log.warning("maxm: description_lang=%r is ignored with description='maxm_captions' (the "
                    "captions come as they are); use description='xm3600' to choose", description_lang)

    data = hub.load_hub_dataset(spec, source, revision=revision, cache_dir=cache_dir, token=token)
    captions = None
    if description == "xm3600":
        wanted = {_caption_lang(iso, description_lang) for iso in langs} | {"en"}
        captions = load_xm3600_captions(wanted, xm3600_source, revision=xm3600_revision,
                                        cache_dir=cache_dir, token=token)

    rows, counts = [], {}
    for iso in langs:
        split = get_language(iso).maxm_split
        if split in data:
            hub.require_columns(spec, data[split].column_names, MAXM_COLUMNS, split)
        records = data[split].to_list() if split in data else []
        counts[iso], texts = len(records), []
        for r in records:
            if captions is None:
                text, text_lang = _join(r["image_captions"], n_captions), iso
            else:
                text, text_lang = _xm3600_description(captions, r["image_id"],
                                                      _caption_lang(iso, description_lang), n_captions)
            texts.append(text)
            task_id = f"maxm-{iso}-{r['question_id']}"
            rows.append(dict(task_id=task_id, parallel_id=task_id, benchmark="maxm", lang=iso,
                             question=r["question"], image=hub.image_bytes(r["image"]),
                             description=text, description_lang=text_lang,
                             reference=(r["answers"] or [None])[0], category=None,
                             image_id=r["image_id"], image_locale=r["image_locale"],
                             answers=list(r["answers"])))
        if captions is None:
            _warn_if_latin(iso, texts)
    if check_counts:
        hub.check_counts(spec, counts, where=str(source or spec.hub_id))
    tasks = tasks_frame(rows, source="maxm")
    tasks.attrs["sources"] = [hub.provenance(spec, source, revision)]
    if captions is not None:
        tasks.attrs["sources"].append(hub.provenance(hub.source_spec("xm3600"), xm3600_source,
                                                     xm3600_revision))
    return tasks


def load_xm3600_captions(langs: set[str] | Sequence[str], source: str | os.PathLike | None = None, *,
                         revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                         token: str | None = None) -> dict[str, dict[str, list[str]]]:
    """{ISO code: {image_id: captions}} from floschne/xm3600 (or a local copy), reading only
    the splits of `langs` (each split file embeds all 3,600 images, so not all 36 are fetched).
    """
    spec = hub.source_spec("xm3600")
    splits = {get_language(iso).xm3600_split: iso for iso in sorted(langs)}
    data_files = {split: spec.split_files.format(split=split) for split in splits}
    data = hub.load_hub_dataset(spec, source, revision=revision, data_files=data_files,
                                cache_dir=cache_dir, token=token)
    return {iso: dict(zip(data[split]["image_id"], data[split]["captions"]))
            for split, iso in splits.items()}


def _caption_lang(query_iso: str, description_lang: str) -> str:
    """XM3600 language for a query: the query's own (if XM3600 has it), a fixed one, or en."""
    iso = query_iso if description_lang == "query" else description_lang
    return iso if get_language(iso).xm3600_split else "en"


def _xm3600_description(captions: dict[str, dict[str, list[str]]], image_id: str, iso: str,
                        n_captions: int) -> tuple[str | None, str | None]:
    for lang in (iso, "en"):
        found = captions.get(lang, {}).get(image_id)
        if found:
            return _join(found, n_captions), lang
    log.warning("maxm: image %s has no XM3600 caption in %s or en; description left empty", image_id, iso)
    return None, None


def _join(captions: Sequence[str] | None, n: int) -> str | None:
    kept = [c.strip() for c in (captions or [])[:n] if c and c.strip()]
    return " ".join(kept) or None


def _warn_if_latin(iso: str, texts: list[str | None]) -> None:
    """The caption language of floschne/maxm is undocumented: flag splits whose script says
    the captions are not in the query language (only checkable for non-Latin scripts)."""
    if LANGUAGES[iso].script == "Latn":
        return
    letters = [ch for text in texts if text for ch in text if ch.isalpha()]
    latin = sum("LATIN" in unicodedata.name(ch, "") for ch in letters)
    if letters and latin / len(letters) > 0.5:
        log.warning("maxm: the image_captions of the %s split are mostly Latin script, so probably "
                    "not %s; description_lang=%r is then wrong. Use description='xm3600' for "
                    "captions in the query language.", iso, LANGUAGES[iso].name, iso)
