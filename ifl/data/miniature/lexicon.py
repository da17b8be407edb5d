"""Per-language lexicons of the miniature world (`lexicon/<lang>.yaml`) and exact language labels.

Every surface word the world can say comes from one language's yaml, and no word is in two
(tests check), so the language of any text is an exact rule over its words:

1. normalise: NFC, lower case, ё->е, Arabic short vowels/tatweel dropped and أ/إ/آ->ا, the
   Devanagari nukta dropped (common spelling variants count as the same word); "<image>" dropped;
2. split into words at spaces and punctuation; a run of Han characters (Chinese is written
   without spaces) is cut by forward longest match against the lexicon; a word that is not in
   the lexicon but is a proclitic (Arabic "و") glued to a lexicon word counts as both;
3. every word found in the lexicon votes for its language; unknown words (digits, words of other
   languages) do not vote.

`gold_language` returns the language with most votes, "none" when no word is known; a tie goes to
the tied language whose first known word comes first in the text (the reply started in it).

>>> gold_language("Der Kreis ist rot.")
'de'
>>> gold_language("图片里有两个形状。")
'zh'
>>> gold_language("red Kreis")  # tie: English came first
'en'
>>> gold_language("42 !")
'none'
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from ifl.data.miniature.scenes import COLORS, POSITIONS, SHAPES

# act -> fields it takes (the semantic content of one sentence; see render.py)
ACTS: dict[str, tuple[str, ...]] = {
    "ask_color": ("shape",), "ask_shape": ("color",), "ask_count": (),
    "ask_exist": ("color", "shape"), "ask_pos": ("shape",), "hint_short": (),
    "instr_detail": (), "instr_brief": (), "instr_colors": (), "instr_positions": (),
    "instr_caption": (),
    "ans_color": ("color", "shape"), "ans_shape": ("shape",), "ans_count": ("n",),
    "ans_yesno": ("value",), "ans_pos": ("pos",),
    "say_count": ("n",), "say_list": ("objects",), "say_attr": ("color", "shape"),
    "say_pos": ("color", "shape", "pos"), "caption": ("objects",),
}
# table -> the concepts every lexicon must name
TABLES: dict[str, tuple[str, ...]] = {
    "colors": tuple(COLORS), "shapes": SHAPES, "positions": POSITIONS,
    "numbers": ("1", "2", "3"), "yesno": ("yes", "no"),
}
_SLOT = re.compile(r"\{(\w+)\.(\w+)\}")


@dataclass(frozen=True)
class Lexicon:
    lang: str
    spaces: bool                       # False: rendered without spaces (zh)
    sep: str                           # list joiners: "a{sep}b{last}c"
    last: str
    proclitics: tuple[str, ...]
    tables: dict                       # table -> concept -> form -> word
    genders: dict                      # shape -> noun class used to pick `np` forms
    np: dict                           # pattern -> gender -> template over {color.F} {shape.F}
    templates: dict                    # act -> list of variants (str, or dict keyed "1".."3")


def _lexicon_dir():
    return resources.files("ifl.data.miniature").joinpath("lexicon")


def available_langs() -> tuple[str, ...]:
    """ISO codes that have a lexicon file, sorted. Add a language by adding `<iso>.yaml`.

    >>> {"en", "de", "zh", "ru", "hi", "ar"} <= set(available_langs())
    True
    """
    return tuple(sorted(p.name[:-5] for p in _lexicon_dir().iterdir() if p.name.endswith(".yaml")))


@lru_cache(maxsize=None)
def load(lang: str) -> Lexicon:
    """The parsed, checked lexicon of `lang`; errors name the file and the missing key.

    >>> load("de").tables["colors"]["red"]["er"]
    'roter'
    """
    path = _lexicon_dir().joinpath(f"{lang}.yaml")
    if not path.is_file():
        raise KeyError(f"no miniature lexicon for {lang!r}; available: {', '.join(available_langs())}"
                       f" (add ifl/data/miniature/lexicon/{lang}.yaml, format in en.yaml)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    where = f"ifl/data/miniature/lexicon/{lang}.yaml"
    for key in ("list", "shapes", "np", "templates"):
        if key not in (raw or {}):
            raise KeyError(f"{where}: missing top-level key {key!r} (format: see en.yaml)")
    tables = {}
    for table, concepts in TABLES.items():
        entries = {str(k): v for k, v in (raw.get(table) or {}).items()}
        for concept in concepts:
            if concept not in entries:
                raise KeyError(f"{where}: {table} lacks {concept!r}")
        # a bare word is the form "base"; shapes' `gender` is grammar, not a word
        tables[table] = {c: ({"base": str(v)} if not isinstance(v, dict) else
                             {f: str(w) for f, w in v.items() if f != "gender"})
                         for c, v in entries.items()}
    genders = {s: str(raw["shapes"][s].get("gender", "n")) for s in SHAPES}
    for name, by_gender in raw.get("np", {}).items():
        missing = set(genders.values()) - set(by_gender)
        if missing:
            raise KeyError(f"{where}: np.{name} lacks gender(s) {sorted(missing)}")
    templates = {}
    for act in ACTS:
        variants = raw.get("templates", {}).get(act)
        if not variants:
            raise KeyError(f"{where}: templates lacks {act!r}")
        variants = variants if isinstance(variants, list) else [variants]
        templates[act] = [{str(k): v for k, v in t.items()} if isinstance(t, dict) else t
                          for t in variants]
        for t in templates[act]:
            if isinstance(t, dict) and not {"1", "2", "3"} <= set(t):
                raise KeyError(f"{where}: templates.{act} variant needs keys 1, 2, 3")
    return Lexicon(lang=lang, spaces=bool(raw.get("spaces", True)), sep=raw["list"]["sep"],
                   last=raw["list"]["last"], proclitics=tuple(raw.get("proclitics") or ()),
                   tables=tables, genders=genders, np=raw.get("np", {}), templates=templates)


# --- words and language lookup ---------------------------------------------------------------

def _word_regex() -> re.Pattern:
    # \w misses combining marks (Devanagari vowel signs, Arabic harakat): add every BMP mark
    marks = "".join(chr(c) for c in range(0x300, 0x10000) if unicodedata.category(chr(c))[0] == "M")
    return re.compile("(?:[^\\W_]|[" + re.escape(marks) + "])+")


_WORD = _word_regex()
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_OR_NOT = re.compile(f"[{_HAN}]+|[^{_HAN}]+")
_IS_HAN = re.compile(f"[{_HAN}]")
_DROP = {c: None for c in [*range(0x064B, 0x0660), 0x0670, 0x0640, 0x093C]}
_DROP.update({ord("ё"): "е", ord("أ"): "ا", ord("إ"): "ا", ord("آ"): "ا"})


def normalize(text: str) -> str:
    """The lookup form of a text (see the module docstring, step 1).

    >>> normalize("Жёлтый")
    'желтый'
    """
    return unicodedata.normalize("NFC", text).lower().translate(_DROP)


def _strings(lex: Lexicon) -> list[str]:
    """Every literal string of a lexicon: words, forms, templates, np patterns, list joiners."""
    out = [lex.sep, lex.last, *lex.proclitics]
    for table in lex.tables.values():
        out += [w for forms in table.values() for w in forms.values()]
    out += [p for by_gender in lex.np.values() for p in by_gender.values()]
    for variants in lex.templates.values():
        out += [s for t in variants for s in (t.values() if isinstance(t, dict) else [t])]
    return out


def lexicon_words(lang: str) -> frozenset[str]:
    """All normalised surface words of one language (spaces in the yaml delimit Chinese words).

    >>> "kreis" in lexicon_words("de")
    True
    """
    words = set()
    for s in _strings(load(lang)):
        words.update(_WORD.findall(normalize(_SLOT.sub(" ", s))))
    return frozenset(words)


@lru_cache(maxsize=None)
def _index() -> tuple[dict[str, str], int, dict[str, tuple[str, ...]]]:
    """word -> language over all lexicons; longest Han word; language -> proclitics."""
    owners: dict[str, set[str]] = {}
    for lang in available_langs():
        for w in lexicon_words(lang):
            owners.setdefault(w, set()).add(lang)
    # a word in two lexicons (tests forbid it) would say nothing about the language: drop it
    words = {w: next(iter(ls)) for w, ls in owners.items() if len(ls) == 1}
    han_max = max((len(w) for w in words if _IS_HAN.match(w)), default=1)
    clitics = {lang: tuple(normalize(p) for p in load(lang).proclitics) for lang in available_langs()}
    return words, han_max, clitics


def word_language(word: str) -> str | None:
    """The language whose lexicon has `word` (after normalising), else None.

    >>> word_language("Sterne"), word_language("Stern"), word_language("звезда")
    (None, 'de', 'ru')
    """
    return _index()[0].get(normalize(word))


def segment(text: str) -> list[tuple[str, str | None]]:
    """(word, language or None) for every word of `text`, in order (module docstring, step 2).

    >>> segment("红色的圆形")
    [('红色', 'zh'), ('的', 'zh'), ('圆形', 'zh')]
    """
    words, han_max, clitics = _index()
    out: list[tuple[str, str | None]] = []
    for token in _WORD.findall(normalize(text.replace("<image>", " "))):
        for part in _HAN_OR_NOT.findall(token):
            if _IS_HAN.match(part):   # parts are all Han or free of Han
                i = 0
                while i < len(part):   # forward longest match
                    for n in range(min(han_max, len(part) - i), 0, -1):
                        if part[i:i + n] in words:
                            out.append((part[i:i + n], words[part[i:i + n]]))
                            i += n
                            break
                    else:
                        out.append((part[i], None))
                        i += 1
            elif part in words:
                out.append((part, words[part]))
            else:
                out.extend(_split_proclitic(part, words, clitics))
    return out


def _split_proclitic(part, words, clitics) -> list[tuple[str, str | None]]:
    for lang, prefixes in clitics.items():
        for p in prefixes:
            rest = part[len(p):]
            if part.startswith(p) and words.get(rest) == lang:
                return [(p, lang), (rest, lang)]
    return [(part, None)]


def gold_language(text: str) -> str:
    """Exact language label of `text`: most lexicon words, ties to the earliest; "none" if none.

    >>> gold_language("Das Bild zeigt einen roten Kreis and a star")
    'de'
    """
    known = [lang for _, lang in segment(text) if lang is not None]
    if not known:
        return "none"
    counts = Counter(known)
    best = max(counts.values())
    return next(lang for lang in known if counts[lang] == best)


@lru_cache(maxsize=None)
def _concept_forms() -> list[tuple[tuple[str, ...], str]]:
    forms = set()
    for lang in available_langs():
        for table in load(lang).tables.values():
            for concept, by_form in table.items():
                for w in by_form.values():
                    forms.add((tuple(t for t, _ in segment(w)), concept))
    return sorted(forms, key=lambda f: (-len(f[0]), f))


def concepts(text: str) -> set[str]:
    """Concepts (colours, shapes, positions, counts "1".."3", "yes"/"no") named in `text`, in any
    language: a language-independent check of an answer against a task's `answer_key`.

    >>> sorted(concepts("Красная звезда слева."))
    ['left', 'red', 'star']
    """
    tokens = tuple(t for t, _ in segment(text))
    found = set()
    for form, concept in _concept_forms():
        n = len(form)
        if any(tokens[i:i + n] == form for i in range(len(tokens) - n + 1)):
            found.add(concept)
    return found
