"""The paper's 14 languages as one data table (`languages.csv`), with every code system we meet.

Codes differ between sources: MaXM calls Hebrew `iw`, PALO names splits `chinese`, NLLB wants
`zho_Hans` while GlotLID v3 says `cmn_Hani`. Everything in `ifl` speaks the paper's ISO 639-1
code (`iso`) and converts at the edges with this table.

>>> LANGUAGES["he"].maxm_split
'iw'
>>> code_for("nllb", "zh")
'zho_Hans'
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Language:
    iso: str           # ISO 639-1, the paper's code (Table 2)
    name: str          # English name
    script: str        # ISO 15924 script of the usual orthography
    glotlid: str       # GlotLID v3 label without __label__ (iso639-3_Script)
    parsed: str        # what the paper's parse_glotlid rule (appendix C) returns for this language
    nllb: str          # FLORES-200 code for NLLB
    maxm_split: str    # split name in floschne/maxm ('' = not in MaXM)
    palo_split: str    # split name in the PALO LLaVA-Bench mirror ('' = not there)
    multiq_code: str   # `language` value in MultiQ.csv
    xm3600_split: str  # split name in floschne/xm3600 ('' = not there)


def _load() -> dict[str, Language]:
    text = resources.files("ifl.data").joinpath("languages.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return {row["iso"]: Language(**row) for row in rows}


LANGUAGES: dict[str, Language] = _load()
PAPER_LANGUAGES: tuple[str, ...] = tuple(LANGUAGES)


def get(iso: str) -> Language:
    """The table row for `iso`, with an error that lists the known codes."""
    try:
        return LANGUAGES[iso]
    except KeyError:
        raise KeyError(f"unknown language code {iso!r}; known: {', '.join(LANGUAGES)}") from None


def code_for(system: str, iso: str) -> str:
    """Code of language `iso` in `system` (a column of languages.csv, e.g. 'nllb', 'maxm_split')."""
    value = getattr(get(iso), system)
    if not value:
        raise KeyError(f"language {iso!r} has no {system} code (not covered by that source)")
    return value


def iso_from(system: str, code: str) -> str:
    """Inverse of `code_for`: the paper's ISO code for `code` in `system`."""
    for lang in LANGUAGES.values():
        if getattr(lang, system) == code:
            return lang.iso
    raise KeyError(f"no language has {system} code {code!r}")
