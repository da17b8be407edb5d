"""Render semantic content ("acts") as text in any language that has a lexicon.

An act is one sentence's meaning as JSON-able data, e.g. {"act": "ask_color", "shape": "star",
"v": 1}: the act name picks the template, its fields fill the slots, `v` picks the paraphrase
(modulo the number of variants a language has, so one act renders in every language). A turn is
a list of acts; {"act": "image"} stands for the "<image>" token. All words come from the
lexicon, so every rendered sentence is in exactly one language.

>>> act = {"act": "say_pos", "color": "red", "shape": "star", "pos": "left"}
>>> [render_act(act, lang) for lang in ("en", "de", "ru", "zh")]
['The red star is on the left.', 'Der rote Stern ist links.', 'Красная звезда слева.', '红色的五角星在左边。']
>>> render_turn([{"act": "image"}, {"act": "ask_count"}, {"act": "hint_short"}], "en")
'<image>\\nHow many shapes are in the image?\\nAnswer the question using a single word or phrase.'
"""
from __future__ import annotations

from ifl.data.miniature.lexicon import _SLOT, ACTS, Lexicon, load

IMAGE_TOKEN = "<image>"
# acts rendered as sentences (capitalised); answers and captions stay as they are
SENTENCES = frozenset(a for a in ACTS if a.split("_")[0] in ("ask", "hint", "instr", "say"))
# acts that stand on a line of their own, as in LLaVA's data ("<image>\n...", "...\nAnswer ...")
_OWN_LINE = frozenset({"image", "hint_short", "break"})
# {"act": "break"}: a line break inside a turn and nothing else (a text-only turn's scene
# description, then its question on the next line, as in the text-only condition's prompt)
BREAK = "break"
_TABLE = {"color": "colors", "shape": "shapes", "pos": "positions", "n": "numbers",
          "value": "yesno"}


class Untranslated(str):
    """A concept value to be written in English whatever the target language (a stand-in for a
    word that machine translation left untranslated); see rerender.py."""


def _word(lex: Lexicon, slot: str, value, form: str) -> str:
    if isinstance(value, Untranslated):
        lex, form = load("en"), "base"
    try:
        return lex.tables[_TABLE[slot]][str(value)][form]
    except KeyError:
        raise KeyError(f"lexicon/{lex.lang}.yaml: no form {slot}.{form} for {value!r}") from None


def _noun_phrase(lex: Lexicon, pattern: str, obj: dict) -> str:
    try:
        template = lex.np[pattern][lex.genders[obj["shape"]]]
    except KeyError:
        raise KeyError(f"lexicon/{lex.lang}.yaml: no np pattern {pattern!r}") from None
    return _fill(template, obj, lex)


def _fill(template: str, ctx: dict, lex: Lexicon) -> str:
    def slot(m):
        name, form = m.groups()
        if name == "obj":
            return _noun_phrase(lex, form, ctx)
        if name == "list":
            items = [_noun_phrase(lex, form, o) for o in ctx["objects"]]
            return items[0] if len(items) == 1 else lex.sep.join(items[:-1]) + lex.last + items[-1]
        return _word(lex, name, ctx[name], form)
    return _SLOT.sub(slot, template)


def render_act(act: dict, lang: str) -> str:
    """One act as text in `lang`.

    >>> render_act({"act": "ans_color", "color": "red", "shape": "star"}, "ru")
    'красная'
    """
    if act["act"] == "image":
        return IMAGE_TOKEN
    if act["act"] == BREAK:
        return ""
    lex = load(lang)
    variants = lex.templates[act["act"]]
    template = variants[act.get("v", 0) % len(variants)]
    if isinstance(template, dict):   # keyed by a count: verb and noun forms follow the number
        template = template[str(act["n"] if "n" in act else len(act["objects"]))]
    text = _fill(template, act, lex)
    if not lex.spaces:
        text = text.replace(" ", "")
    if act["act"] in SENTENCES:
        text = text[:1].upper() + text[1:]
    return text


def render_turn(acts: list[dict], lang: str, texts: list[str] | None = None) -> str:
    """A turn (list of acts) as one string: sentences joined by a space (nothing in Chinese),
    the image token and the short-answer hint on lines of their own. `texts`, if given, are the
    already rendered acts (rerender passes corrupted ones).

    >>> render_turn([{"act": "say_count", "n": 1}, {"act": "say_list",
    ...              "objects": [{"color": "blue", "shape": "circle"}]}], "de")
    'Auf dem Bild ist eine Form. Das Bild zeigt einen blauen Kreis.'
    """
    texts = texts if texts is not None else [render_act(a, lang) for a in acts]
    sep = " " if load(lang).spaces else ""
    out = texts[0] if texts else ""
    for prev, act, text in zip(acts, acts[1:], texts[1:]):
        if act["act"] == BREAK:
            continue
        out += ("\n" if {prev["act"], act["act"]} & _OWN_LINE else sep) + text
    return out
