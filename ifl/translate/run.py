"""Resumable batched translation of a list of strings with any backend.

A backend is any object with a `backend_id` string (everything that changes its output: model,
revision, decoding settings) and `translate_batch(texts, src, tgt) -> list[str]` taking the
paper's ISO codes (`ifl/data/languages.csv`).

>>> class Upper:
...     backend_id = "upper:v1"
...     def translate_batch(self, texts, src, tgt):
...         return [t.upper() for t in texts]
>>> run = translate_texts(["a", "bb", "a", ""], "en", "de", Upper(), store=None, progress=False)
>>> run.translations
['A', 'BB', 'A', '']
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

from tqdm import tqdm  # text bars: readable in notebooks, logs and terminals alike

from ifl.data.languages import get as get_language
from ifl.progress import report as report_progress
from ifl.translate.store import Shard, TranslationStore, text_key

log = logging.getLogger(__name__)


class Translator(Protocol):
    backend_id: str

    def translate_batch(self, texts: list[str], src: str, tgt: str) -> list[str]: ...


class TranslationError(RuntimeError):
    """Some items could not be translated; what worked is in the store, a rerun retries the rest."""


@dataclass
class TranslationRun:
    translations: list[str | None]                     # aligned with the input; None = failed
    failed: dict[str, str] = field(default_factory=dict)  # source text -> last error message
    cached: int = 0       # unique texts found in the store
    translated: int = 0   # unique texts translated by this call


def translate_texts(texts: list[str], src: str, tgt: str, translator: Translator,
                    store: TranslationStore | str | os.PathLike | None, batch_size: int = 16,
                    progress: bool = True, retries: int = 1) -> TranslationRun:
    """Translate `texts` from `src` to `tgt`, resuming from `store` (None: keep nothing).

    Each distinct non-blank text is sent once; blank strings come back unchanged and src == tgt
    is the identity. Pending texts go longest first in batches of `batch_size` (similar lengths
    pad less; an out-of-memory batch shows up at the start, not after hours), each batch is
    persisted before the next starts. A failing batch is retried item by item; items that still
    fail get `retries` more item-by-item passes and are then reported in `.failed`, not raised.
    KeyboardInterrupt and SIGKILL lose at most the batch in flight.
    """
    get_language(src), get_language(tgt)  # fail early, with the list of known codes
    if src == tgt:
        return TranslationRun(translations=list(texts))
    if isinstance(store, (str, os.PathLike)):
        store = TranslationStore(store)
    shard = (store.shard(translator.backend_id, src, tgt) if store is not None
             else Shard(None, translator.backend_id))
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    pending = sorted((t for t in unique if text_key(t) not in shard.done), key=len, reverse=True)
    run = TranslationRun(translations=[], cached=len(unique) - len(pending))
    try:
        with tqdm(total=len(pending), desc=f"translate {src}->{tgt}", unit="text",
                  disable=not progress) as bar:
            failed: list[str] = []
            for start in range(0, len(pending), batch_size):
                batch = pending[start:start + batch_size]
                failed += _translate_and_store(translator, batch, src, tgt, shard)
                bar.update(len(batch))
                report_progress(f"translate {src}->{tgt}", start + len(batch), len(pending))
            for _ in range(retries):
                if not failed:
                    break
                log.info("retrying %d failed texts one by one", len(failed))
                failed = [t for t in failed
                          if _translate_and_store(translator, [t], src, tgt, shard, whole=False)]
    finally:
        shard.close()
    run.failed = {t: shard.errors[text_key(t)] for t in failed}
    run.translated = len(pending) - len(failed)
    run.translations = [t if not t.strip() else shard.done.get(text_key(t)) for t in texts]
    if failed:
        log.warning("%d of %d texts failed to translate %s->%s (first error: %s); "
                    "rerun to retry them", len(failed), len(unique), src, tgt,
                    next(iter(run.failed.values())))
    return run


def _translate_and_store(translator: Translator, batch: list[str], src: str, tgt: str,
                         shard: Shard, whole: bool = True) -> list[str]:
    """Translate a batch (falling back to one at a time), persist it, return the failed texts."""
    done: dict[str, str] = {}
    errors: dict[str, str] = {}
    if whole:
        try:
            done = dict(zip(batch, _checked(translator.translate_batch(batch, src, tgt), batch)))
        except Exception as exc:  # noqa: BLE001 -- any backend error: isolate the bad item below
            log.debug("batch of %d failed (%r); translating one by one", len(batch), exc)
    if not done:
        for text in batch:
            try:
                done[text] = _checked(translator.translate_batch([text], src, tgt), [text])[0]
            except Exception as exc:  # noqa: BLE001 -- recorded in the store, reported at the end
                errors[text] = f"{type(exc).__name__}: {exc}"
    for text, out in list(done.items()):
        if text.strip() and not out.strip():  # an empty answer to real text is a failure, not a result
            del done[text]
            errors[text] = "EmptyTranslation: the backend returned an empty string"
    shard.append(done, errors)
    return list(errors)


def _checked(out, batch: list[str]) -> list[str]:
    """A backend answer is valid if it is one string per input."""
    out = list(out)
    if len(out) != len(batch) or not all(isinstance(o, str) for o in out):
        raise ValueError(f"backend returned {len(out)} items for {len(batch)} texts "
                         f"(types: {sorted({type(o).__name__ for o in out})})")
    return out

