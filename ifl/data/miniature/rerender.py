"""Translate miniature training records by re-rendering their content in another language.

The miniature's stand-in for machine translation (paper §4.1, App. D): every turn's acts are
rendered in the target language, keeping "<image>" and the conversation structure. With
`error_rate` > 0 each sentence (act; the image token excepted) is corrupted with that
probability, one corruption per sentence, its kind drawn uniformly from those that apply:
- wrong_word:   one colour, shape, position, count or yes/no is replaced by another one,
                correctly inflected in the target language (a mistranslated content word);
- drop_word:    one word is left out (only in sentences of two or more words);
- untranslated: one colour or shape word stays English ("der red Kreis"); a one-word answer
                (count, yes/no, position) stays English as a whole; never for target "en".
With `noise="mt"` the kinds are those machine translation itself produces on LLaVA-style data
(NMT failure modes: a source copied through untranslated, output cut short, foreign-script tokens
left inside the target text, a mistranslated content word), drawn uniformly from those that apply:
- copy_through: the whole sentence stays in the source language (off-target / copy output);
- truncate:     the sentence loses its second half (early end-of-sentence on long inputs);
- script_mix:   one colour or shape word stays in the source (Latin) script inside the target
                text ("Purple的五角星"); only for targets written in another script;
- wrong_word:   as above.
Every corruption is listed in the record's `translation.corruptions` (turn, act, kind, detail).
Results depend only on (seed, record id, target language).

>>> from ifl.data.miniature.training import caption_record
>>> rec = rerender_record(caption_record(0, seed=0), "de")
>>> rec["conversations"][0]["value"], rec["conversations"][1]["value"]
('Beschreibe das Bild knapp.\\n<image>', 'ein weißes Dreieck, ein gelber Kreis und ein blaues Quadrat')
"""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

from ifl.data.miniature.lexicon import _WORD, segment
from ifl.data.miniature.render import Untranslated, render_act, render_turn
from ifl.data.miniature.scenes import COLORS, POSITIONS, SHAPES
from ifl.data.miniature.tasks import check_langs
from ifl.stage import write_json_atomic

CORRUPTIONS: tuple[str, ...] = ("wrong_word", "drop_word", "untranslated")
MT_CORRUPTIONS: tuple[str, ...] = ("wrong_word", "copy_through", "truncate", "script_mix")
NOISE_MODELS = {"word": CORRUPTIONS, "mt": MT_CORRUPTIONS}
LATIN_SCRIPT = frozenset({"en", "de"})   # lexicon languages written in the Latin script
_VALUES = {"color": tuple(COLORS), "shape": SHAPES, "pos": POSITIONS, "n": (1, 2, 3),
           "value": ("yes", "no")}


def _slots(act: dict, fields: tuple[str, ...]) -> list[tuple]:
    """Paths to the act's concept values among `fields`: ("color",) or ("objects", k, "shape")."""
    paths = [(f,) for f in fields if f in act]
    for k, obj in enumerate(act.get("objects", [])):
        paths += [("objects", k, f) for f in fields if f in obj]
    return paths


def _get(act: dict, path: tuple):
    return act[path[0]] if len(path) == 1 else act[path[0]][path[1]][path[2]]


def _set(act: dict, path: tuple, value) -> dict:
    act = copy.deepcopy(act)
    if len(path) == 1:
        act[path[0]] = value
    else:
        act[path[0]][path[1]][path[2]] = value
    return act


def _word_spans(text: str, lang: str) -> list[tuple[int, int]]:
    """(start, end) of every word; Chinese is cut at the lexicon's word boundaries."""
    if lang != "zh":
        return [m.span() for m in _WORD.finditer(text)]
    spans, pos = [], 0
    for word, _ in segment(text):   # Han text is unchanged by normalisation, so find() works
        pos = text.index(word, pos)
        spans.append((pos, pos + len(word)))
        pos += len(word)
    return spans


def _drop_word(text: str, spans: list[tuple[int, int]], rng: random.Random) -> tuple[str, str]:
    start, end = rng.choice(spans)
    word = text[start:end]
    if start > 0 and text[start - 1] == " ":   # take one neighbouring space with the word
        start -= 1
    elif text[end:end + 1] == " ":
        end += 1
    return text[:start] + text[end:], word


def corrupt(act: dict, lang: str, rng: random.Random, noise: str = "word",
            source_lang: str = "en") -> tuple[str, dict] | None:
    """A corrupted rendering of `act` in `lang` and what was done, or None if nothing applies.
    noise: "word" (CORRUPTIONS) or "mt" (MT_CORRUPTIONS; see the module doc).

    >>> act = {"act": "say_attr", "color": "red", "shape": "circle"}
    >>> corrupt(act, "de", random.Random(0))
    ('Der Kreis ist.', {'kind': 'drop_word', 'detail': 'rot'})
    """
    text = render_act(act, lang)
    # only slots this language's template writes (German "rot" answers a colour question
    # without naming the shape, so changing the shape would change nothing)
    content_slots = [p for p in _slots(act, tuple(_VALUES)) if render_act(
        _set(act, p, next(v for v in _VALUES[p[-1]] if v != _get(act, p))), lang) != text]
    english_slots = [p for p in _slots(act, ("color", "shape"))
                     if render_act(_set(act, p, Untranslated(_get(act, p))), lang) != text]
    kinds = ["wrong_word"] if content_slots else []
    spans = _word_spans(text, lang)
    if noise == "word":
        kinds += ["drop_word"] if len(spans) >= 2 else []
        if lang != "en" and (english_slots or act["act"] in ("ans_count", "ans_yesno", "ans_pos")):
            kinds.append("untranslated")
    elif noise == "mt":
        kinds += ["copy_through"] if lang != source_lang else []
        kinds += ["truncate"] if len(spans) >= 2 else []
        kinds += ["script_mix"] if lang not in LATIN_SCRIPT and english_slots else []
    else:
        raise ValueError(f"unknown noise model {noise!r}; known: {', '.join(NOISE_MODELS)}")
    if not kinds:
        return None
    kind = rng.choice(kinds)
    if kind == "copy_through":
        return render_act(act, source_lang), {"kind": kind, "detail": f"left in {source_lang}"}
    if kind == "truncate":
        cut = spans[len(spans) // 2 - 1][1] if len(spans) > 2 else spans[0][1]
        return text[:cut], {"kind": kind, "detail": text[cut:].strip()}
    if kind == "script_mix":
        path = rng.choice(english_slots)
        mixed = _set(act, path, Untranslated(_get(act, path)))
        return render_act(mixed, lang), {"kind": kind, "detail": ".".join(map(str, path))}
    if kind == "wrong_word":
        path = rng.choice(content_slots)
        old = _get(act, path)
        new = rng.choice([v for v in _VALUES[path[-1]] if v != old])
        detail = f"{'.'.join(map(str, path))}: {old} -> {new}"
        return render_act(_set(act, path, new), lang), {"kind": kind, "detail": detail}
    if kind == "drop_word":
        text, word = _drop_word(text, spans, rng)
        return text, {"kind": kind, "detail": word}
    if english_slots:
        path = rng.choice(english_slots)
        untranslated = _set(act, path, Untranslated(_get(act, path)))
        return render_act(untranslated, lang), {"kind": kind, "detail": ".".join(map(str, path))}
    return render_act(act, "en"), {"kind": kind, "detail": "whole answer"}


def rerender_record(record: dict, target_lang: str, error_rate: float = 0.0,
                    rng: random.Random | None = None, noise: str = "word") -> dict:
    """`record` (from training.py) with its conversations written in `target_lang`.
    rng: random source of the corruptions; default derived from the record id and language.

    >>> from ifl.data.miniature.training import instruct_record
    >>> rec = instruct_record(3, seed=0)
    >>> rerender_record(rerender_record(rec, "zh"), "en")["conversations"] == rec["conversations"]
    True
    """
    check_langs([target_lang], "target_lang")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    rng = rng or random.Random(f"rerender:0:{record['id']}:{target_lang}")
    conversations, corruptions = [], []
    for t, (turn, acts) in enumerate(zip(record["conversations"], record["content"])):
        texts = []
        for k, act in enumerate(acts):
            text = render_act(act, target_lang)
            if act["act"] not in ("image", "break") and error_rate > 0 and rng.random() < error_rate:
                done = corrupt(act, target_lang, rng, noise, record.get("lang", "en"))
                if done:
                    text = done[0]
                    corruptions.append({"turn": t, "act": k, **done[1]})
            texts.append(text)
        conversations.append({**turn, "value": render_turn(acts, target_lang, texts)})
    translation = {"source_lang": record.get("lang", "en"), "error_rate": error_rate,
                   "noise": noise, "corruptions": corruptions}
    return {**record, "conversations": conversations, "lang": target_lang,
            "translation": translation}


def rerender_records(records: list[dict], target_lang: str, error_rate: float = 0.0,
                     seed: int = 0, noise: str = "word") -> list[dict]:
    """Every record re-rendered; record i's corruptions depend on (seed, its id, target_lang)."""
    return [rerender_record(r, target_lang, error_rate,
                            random.Random(f"rerender:{seed}:{r['id']}:{target_lang}"), noise)
            for r in records]


def rerender_file(in_path: str | os.PathLike, out_path: str | os.PathLike, target_lang: str,
                  error_rate: float = 0.0, seed: int = 0, noise: str = "word") -> Path:
    """Re-render a captions/instruct JSON file written by `write_training_data` (atomic write).
    Image paths stay as they are, so the translated file uses the same images folder."""
    records = json.loads(Path(in_path).read_text(encoding="utf-8"))
    return write_json_atomic(Path(out_path),
                             rerender_records(records, target_lang, error_rate, seed, noise),
                             indent=None)
