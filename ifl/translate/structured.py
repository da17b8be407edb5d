"""Translate structured data without breaking it: LLaVA conversation JSON and task tables.

Only natural-language text reaches the backend. A value is cut at `<image>` tokens and line
breaks (both kept verbatim, so the token stays where it was, before or after the text), each
line's leading/trailing whitespace is kept, and a line longer than `max_chars` is cut between
sentences (NLLB was trained on single sentences of <= 512 tokens) and glued back with a space
(no space for Chinese and Japanese).

>>> plan = plan_value("<image>\\nWhat is this?")
>>> plan
['', '<image>', '', '\\n', ('What is this?',)]
>>> render(plan, {"What is this?": "Was ist das?"}.get, "de")
'<image>\\nWas ist das?'
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from ifl.data.schema import tasks_frame
from ifl.stage import write_json_atomic
from ifl.translate.run import TranslationError, Translator, translate_texts

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
_PIECES = re.compile(r"(<image>|\n)")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
_NO_SPACE_LANGS = ("zh", "ja")


def plan_value(value: str, max_chars: int = 400) -> list[str | tuple[str, ...]]:
    """Cut a value into literal strings (kept) and tuples of chunks (to translate)."""
    plan: list[str | tuple[str, ...]] = []
    for piece in _PIECES.split(value):
        core = piece.strip()
        if piece in (IMAGE_TOKEN, "\n") or not core:
            plan.append(piece)
            continue
        lead, trail = piece[:len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()):]
        if lead:
            plan.append(lead)
        plan.append(tuple(split_sentences(core, max_chars)))
        if trail:
            plan.append(trail)
    return plan


def split_sentences(text: str, max_chars: int = 400) -> list[str]:
    """Greedily pack sentences into chunks of <= max_chars (a longer sentence: cut at spaces)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    for sentence in filter(None, _SENTENCE_END.split(text)):
        while len(sentence) > max_chars:  # one overlong sentence: cut at the last space
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        pieces.append(sentence)
    chunks: list[str] = []
    for piece in filter(None, pieces):
        if chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
            chunks[-1] += " " + piece
        else:
            chunks.append(piece)
    return chunks


def render(plan: list[str | tuple[str, ...]], lookup, tgt: str) -> str | None:
    """Reassemble a plan with `lookup(chunk) -> translation or None`; None if any chunk failed."""
    joiner = "" if tgt in _NO_SPACE_LANGS else " "
    out = []
    for part in plan:
        if isinstance(part, str):
            out.append(part)
            continue
        translated = [lookup(chunk) for chunk in part]
        if any(t is None for t in translated):
            return None
        out.append(joiner.join(translated))
    return "".join(out)


def translate_strings(values: list[str], src: str, tgt: str, translator: Translator, store,
                      max_chars: int = 400, **kwargs) -> list[str | None]:
    """Plan, translate (resumably, deduplicated) and render many strings; None where one failed."""
    plans = [plan_value(v, max_chars) for v in values]
    chunks = [c for plan in plans for part in plan if isinstance(part, tuple) for c in part]
    run = translate_texts(chunks, src, tgt, translator, store, **kwargs)
    lookup = dict(zip(chunks, run.translations)).get
    return [render(plan, lookup, tgt) for plan in plans]


def translate_conversations(records: list[dict], tgt: str, translator: Translator, store,
                            src: str = "en", max_chars: int = 400, on_error: str = "drop",
                            **kwargs) -> list[dict]:
    """LLaVA records (`{"id", "image"?, "conversations": [{"from", "value"}, ...]}`) with every
    `value` translated; all other keys, the order, ids and `<image>` placement are kept.

    on_error: "drop" leaves out records with an untranslated part (logged), "source" keeps the
    source text there, "raise" raises TranslationError (after saving all that worked).
    """
    _check_on_error(on_error, ("drop", "source", "raise"))
    values = [turn["value"] for record in records for turn in record["conversations"]]
    translated = iter(translate_strings(values, src, tgt, translator, store, max_chars, **kwargs))
    out, failed_ids = [], []
    for record in records:
        turns, complete = [], True
        for turn in record["conversations"]:
            value = next(translated)
            if value is None:
                complete, value = False, turn["value"]
            turns.append({**turn, "value": value})
        if not complete:
            failed_ids.append(record.get("id"))
        if complete or on_error == "source":
            out.append({**record, "conversations": turns})
    if failed_ids:
        message = (f"{len(failed_ids)} of {len(records)} records have untranslated parts "
                   f"(ids {failed_ids[:5]}...); rerun with the same store to retry only those")
        if on_error == "raise":
            raise TranslationError(message)
        log.warning("%s; on_error=%r", message, on_error)
    return out


def translate_llava_json(src_path: str | os.PathLike, out_path: str | os.PathLike, tgt: str,
                         translator: Translator, store, **kwargs) -> Path:
    """Translate a LLaVA training JSON file (e.g. llava_v1_5_mix665k.json) into `out_path`,
    written atomically (temp file + rename) so a crash never leaves half a file."""
    records = json.loads(Path(src_path).read_text(encoding="utf-8"))
    out = translate_conversations(records, tgt, translator, store, **kwargs)
    return write_json_atomic(Path(out_path), out, indent=None)


def new_task_id(task_id: str, src: str, tgt: str) -> str:
    """Replace the language part of a task id, or append one.

    >>> new_task_id("visit-en-0007", "en", "de"), new_task_id("visit-0007", "en", "de")
    ('visit-de-0007', 'visit-0007-de')
    """
    parts = task_id.split("-")
    if src in parts:
        parts[parts.index(src)] = tgt
        return "-".join(parts)
    return f"{task_id}-{tgt}"


def translate_task_fields(tasks_df: pd.DataFrame, tgt_langs, translator: Translator, store,
                          fields=("question", "description"), max_chars: int = 400,
                          on_error: str = "raise", **kwargs) -> pd.DataFrame:
    """The input tasks plus, for each target language, a translated copy of every task.

    A copy keeps `parallel_id` (and image, benchmark, extras), gets `lang`=tgt, a new task_id
    (`new_task_id`) and the listed text `fields` translated; add "reference" to `fields` to
    translate references too. A field is read in the task's `lang`, except `description`, which is
    in `description_lang` (and gets tgt once translated). Tasks already in tgt are not copied;
every parallel_id must occur once among the others (one source language).
    on_error: "raise" (default; rerun to retry, finished work is in the store) or "drop" the task.
    """
    _check_on_error(on_error, ("raise", "drop"))
    src_df = tasks_frame(tasks_df, source="translate_task_fields input")
    new_rows: list[pd.DataFrame] = []
    for tgt in tgt_langs:
        rows = src_df[src_df["lang"] != tgt].copy()
        repeated = rows["parallel_id"].duplicated()
        if repeated.any():  # two source languages would give two tgt copies of one item
            raise ValueError(f"parallel_id {rows['parallel_id'][repeated].iloc[0]!r} occurs in "
                             f"several languages; pass the tasks of one source language only")
        ok = pd.Series(True, index=rows.index)
        for field in fields:
            src_col = (rows["description_lang"].fillna(rows["lang"]) if field == "description"
                       else rows["lang"])
            present = rows[field].notna() & (src_col != tgt)
            for src, idx in rows[present].groupby(src_col[present]).groups.items():
                values = translate_strings(list(rows.loc[idx, field].astype(str)), src, tgt,
                                           translator, store, max_chars, **kwargs)
                rows.loc[idx, field] = values
                ok.loc[idx] &= pd.Series([v is not None for v in values], index=idx)
            if field == "description":
                rows.loc[rows["description"].notna(), "description_lang"] = tgt
        rows["task_id"] = [new_task_id(t, s, tgt) for t, s in zip(rows["task_id"], rows["lang"])]
        rows["lang"] = tgt
        if not ok.all():
            message = f"{int((~ok).sum())} tasks could not be translated into {tgt}"
            if on_error == "raise":
                raise TranslationError(f"{message}; rerun with the same store to retry them")
            log.warning("%s; dropped", message)
        new_rows.append(rows[ok])
    return tasks_frame(pd.concat([src_df, *new_rows], ignore_index=True),
                       source="translate_task_fields output")


def _check_on_error(on_error: str, allowed: tuple[str, ...]) -> None:
    if on_error not in allowed:
        raise ValueError(f"on_error={on_error!r}; choose one of {allowed}")
