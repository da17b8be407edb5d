"""The expert-annotation sample (appendix B): draw it, write the spreadsheet, read it back.

DSL corrects GlotLID's (and GPT-4o's) errors with expert labels on a random sample whose
inclusion probabilities are known. The paper stratified on benchmark, "weighted the probability
by the inverse proportion of the originating benchmark to the full dataset", then multiplied
German by 4, Chinese and Hindi by 2, and Romanian, Russian and Urdu by 1/2, and drew 1000
responses without replacement.

    w = annotation_weights(df)                               # one weight per response
    df["sample_prob"] = inclusion_probabilities(w, 1000)     # pi for EVERY row: DSL needs all
    sample = annotation_sample(df, 1000, seed=0)             # the 1000 rows, with sample_prob
    export_sheet(sample, "annotation.csv")                   # annotators fill three columns
    labels = import_sheet("annotation.csv", sample)          # validated; partial sheets are fine

How we draw (the paper does not say): randomised systematic PPS. Each row gets
pi_i = min(1, c * w_i) with c chosen so that sum(pi) = n (rows that would exceed 1 are taken
with certainty and the rest rescaled); the rows are shuffled, laid end to end as intervals of
length pi_i on [0, n], and the rows hit by the points u, u+1, ..., u+n-1 (u uniform in (0, 1])
are taken. This gives exactly n distinct rows and first-order inclusion probabilities exactly
pi_i, so `sample_prob` is exact rather than estimated. (Successive weighted draws, e.g.
`DataFrame.sample(n, weights=w)`, do not have pi proportional to w, and their pi has no closed
form.) Shuffling first makes every pair of rows jointly selectable.

Sheets are UTF-8 CSV with a byte-order mark, so spreadsheet programs show non-Latin text.
Blank cells mean "not annotated yet"; `NA` is the annotators' answer "no coherent output".
A sheet saved back by a spreadsheet program is read whatever it did to it: `;` or tab separators
(Excel in many locales), cp1252, UTF-16 with a byte-order mark ("Unicode text"). A sheet that
holds labels is never written over: `export_sheet` refuses, and `place_blank_sheet` puts the
fresh blank sheet beside it (`<name>.blank.csv`).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ifl.langid import FALLBACK_LABELS, PARSED_NAMES, fidelity, parse_glotlid
from ifl.stage import atomic_path

PAPER_LANG_WEIGHTS: Mapping[str, float] = {"de": 4, "zh": 2, "hi": 2, "ro": .5, "ru": .5, "ur": .5}
LABEL_COLUMNS = ("answer_language", "matches_gold", "correct")
THREE_WAY = ("true", "false", "NA")  # the paper's categories for matches_gold and correct


def annotation_weights(df: pd.DataFrame, *, benchmark_col: str = "benchmark",
                       lang_col: str = "lang",
                       lang_weights: Mapping[str, float] = PAPER_LANG_WEIGHTS) -> pd.Series:
    """w_i = 1 / (share of row i's benchmark in df) * language factor (1 if not listed).

    >>> df = pd.DataFrame({"benchmark": ["a", "a", "a", "b"], "lang": ["de", "en", "ro", "en"]})
    >>> annotation_weights(df).round(3).tolist()
    [5.333, 1.333, 0.667, 4.0]
    """
    share = df[benchmark_col].map(df[benchmark_col].value_counts(normalize=True))
    factor = df[lang_col].map(lambda lang: lang_weights.get(lang, 1.0)).astype(float)
    return (factor / share).rename("sample_weight")


def inclusion_probabilities(weights, n: int) -> np.ndarray:
    """pi_i = min(1, c * w_i) with sum(pi) = n (rows capped at 1 are certain).

    >>> inclusion_probabilities([1, 1, 2, 8], 2).tolist()
    [0.25, 0.25, 0.5, 1.0]
    """
    w = np.asarray(weights, dtype=float)
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative")
    if not 0 < n <= np.count_nonzero(w):
        raise ValueError(f"cannot draw n={n} rows from {np.count_nonzero(w)} with positive weight")
    pi = np.zeros_like(w)
    certain = np.zeros(w.shape, dtype=bool)
    while True:  # each pass caps at least one more row, so at most n passes
        rest = ~certain
        pi[rest] = (n - certain.sum()) * w[rest] / w[rest].sum()
        pi[certain] = 1.0
        over = rest & (pi >= 1)
        if not over.any():
            return pi
        certain |= over


def systematic_pps(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of the rows drawn by randomised systematic sampling with probabilities `pi`
    (sum(pi) must be a whole number n; returns n sorted positions)."""
    pi = np.asarray(pi, dtype=float)
    certain = np.flatnonzero(pi >= 1 - 1e-12)
    rest = np.flatnonzero((pi > 0) & (pi < 1 - 1e-12))
    m = int(round(pi.sum())) - certain.size
    if m <= 0:
        return np.sort(certain)
    order = rng.permutation(rest)
    ends = np.cumsum(pi[order])
    ends *= m / ends[-1]  # absorb float drift so the last interval ends exactly at m
    u = 1.0 - rng.random()  # in (0, 1]
    # points u, u+1, ... at or below x: floor(x - u) + 1; a row is hit when that count steps up
    hits = np.diff(np.floor(ends - u), prepend=-1.0) > 0
    drawn = order[hits]
    assert drawn.size == m, (drawn.size, m)
    return np.sort(np.concatenate([certain, drawn]))


def annotation_sample(df: pd.DataFrame, n: int = 1000, *, seed: int,
                      benchmark_col: str = "benchmark", lang_col: str = "lang",
                      lang_weights: Mapping[str, float] = PAPER_LANG_WEIGHTS) -> pd.DataFrame:
    """n rows of df (index kept, original order) with `sample_weight` and `sample_prob` (pi).

    >>> df = pd.DataFrame({"benchmark": ["a"] * 6 + ["b"] * 2, "lang": ["de", "en"] * 4})
    >>> s = annotation_sample(df, 3, seed=0)
    >>> len(s), list(s.columns)
    (3, ['benchmark', 'lang', 'sample_weight', 'sample_prob'])
    """
    weights = annotation_weights(df, benchmark_col=benchmark_col, lang_col=lang_col,
                                 lang_weights=lang_weights)
    pi = inclusion_probabilities(weights.to_numpy(), n)
    rows = systematic_pps(pi, np.random.default_rng(seed))
    out = df.iloc[rows].copy()
    out["sample_weight"] = weights.to_numpy()[rows]
    out["sample_prob"] = pi[rows]
    return out


def export_sheet(sample: pd.DataFrame, path: str | os.PathLike, *, lang_col: str = "lang",
                 question_col: str = "question", response_col: str = "response",
                 reference_col: str = "reference", keep_labels: bool = True) -> Path:
    """Write the annotators' CSV: id (the sample's index), query_language, question,
    reference (the gold answer, when the sample has one), response, and the empty columns
    answer_language, matches_gold (true/false/NA), correct (true/false/NA).

    keep_labels: refuse (SheetError) to write over a file that holds labels, or that is not
    a readable sheet; False only for a sheet this code filled itself (simulated annotators)."""
    if keep_labels and Path(path).exists() and (held := labels_held(path)) != 0:
        what = f"holds {held} labeled row(s)" if held else "is not a sheet this code can read"
        raise SheetError(f"{path} {what}; it is not written over. Import it (set "
                         "04_score_languages.annotation_sheet to it) or move it away.")
    if not sample.index.is_unique:
        raise ValueError("sample index must be unique: it becomes the sheet's id column")
    sheet = pd.DataFrame({"id": sample.index.astype(str),
                          "query_language": sample[lang_col].to_numpy(),
                          "question": _as_text(sample[question_col])})
    if reference_col in sample.columns:
        sheet["reference"] = _as_text(sample[reference_col])
    sheet["response"] = _as_text(sample[response_col])
    for column in LABEL_COLUMNS:
        sheet[column] = ""
    return write_sheet(sheet, path)


def write_sheet(sheet: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a sheet as export_sheet does: every text cell quoted (a lone carriage return in a
    model's answer would otherwise split its row when read back), UTF-8 with a byte-order mark.
    Written to a temporary name and renamed: a full disk never leaves half a sheet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.to_csv(tmp, index=False, encoding="utf-8-sig", quoting=csv.QUOTE_NONNUMERIC)
    return path


def labels_held(path: str | os.PathLike) -> int | None:
    """Rows of a sheet with any label cell filled (0 for a blank sheet or an empty file);
    None when the file is not a sheet that can be read (treated as precious)."""
    try:
        sheet = read_sheet(path)
    except SheetError as exc:
        return 0 if "is empty" in str(exc) else None
    present = [c for c in LABEL_COLUMNS if c in sheet.columns]
    if "id" not in sheet.columns or not present:
        return None
    return int((sheet[present].apply(lambda col: col.str.strip()) != "").any(axis=1).sum())


def place_blank_sheet(sample: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Export the blank sheet to `path`, or, when `path` holds labels (an annotator filled the
    exported sheet in place), beside it as `<name>.blank.csv`, keeping the filled one.
    Returns where the blank sheet went."""
    path = Path(path)
    if path.exists() and labels_held(path) != 0:
        path = path.with_name(f"{path.stem}.blank{path.suffix}")
    return export_sheet(sample, path)


def _as_text(column: pd.Series) -> np.ndarray:
    """Free text for a spreadsheet: a leading space before = + - @, which spreadsheet programs
    would otherwise read as a formula (LLM answers often start with "- "). Only the label
    columns are read back, so this never changes what is imported."""
    text = column.fillna("").astype(str)
    return np.where(text.str.match(r"[=+\-@]"), " " + text, text)


class SheetError(ValueError):
    """An annotation sheet is broken; the message names the file and the line."""


_ALIASES = {"iw": "he", "zho": "cmn", "ara": "arb"}  # old or macro-language codes
_BY_ISO3 = {label.split("_")[0]: label for label in FALLBACK_LABELS.values()}  # deu -> deu_Latn


def answer_language_name(value: str) -> str:
    """An annotator's answer language -> a parse_glotlid name. Accepts the names themselves
    ("german", "other_latin"), ISO 639-1 codes ("de", "it"), ISO 639-3 codes ("deu") and
    GlotLID labels ("deu_Latn"), case-insensitively; ISO codes go through the fallback label
    table, so any of lid.176's 176 languages works.

    >>> [answer_language_name(x) for x in ("de", "Chinese", "ita", "urd_Arab")]
    ['german', 'chinese', 'other_latin', 'urdu']
    """
    text = value.strip()
    low = _ALIASES.get(text.lower(), text.lower())
    if low.replace(" ", "_").replace("-", "_") in PARSED_NAMES:  # "other latin" too
        return low.replace(" ", "_").replace("-", "_")
    if low in FALLBACK_LABELS:
        return parse_glotlid(FALLBACK_LABELS[low])
    if low in _BY_ISO3:
        return parse_glotlid(_BY_ISO3[low])
    if "_" in text:
        iso, _, script = text.partition("_")
        return parse_glotlid(f"{iso.lower()}_{script.title()}")
    raise ValueError(f"unknown answer language {value!r}: use one of {', '.join(PARSED_NAMES)}, "
                     "an ISO 639-1/639-3 code (de, deu) or a GlotLID label (deu_Latn)")


def import_sheet(path: str | os.PathLike, sample: pd.DataFrame, *,
                 lang_col: str = "lang") -> pd.DataFrame:
    """Read a (possibly partly) filled sheet back, indexed like `sample`.

    Columns: answer_language (a parse_glotlid name, <NA> = not annotated), matches_gold and
    correct ("true"/"false"/"NA", <NA> = not annotated), labeled (answer_language given) and
    fidelity (answer language == query language; <NA> where not labeled). Rows missing from the
    sheet stay unlabeled. Unknown or repeated ids and bad values raise SheetError naming the
    file and line (line 1 is the header).
    """
    path = Path(path)
    sheet = read_sheet(path)
    missing = [c for c in ("id", *LABEL_COLUMNS) if c not in sheet.columns]
    if missing:
        raise SheetError(f"{path}: missing column(s) {missing} (has {list(sheet.columns)})")
    ids = {str(i): i for i in sample.index}
    out = pd.DataFrame(index=sample.index)
    for column in LABEL_COLUMNS:
        out[column] = pd.Series(pd.NA, index=sample.index, dtype="string")
    first_line: dict[str, int] = {}
    for pos, row in enumerate(sheet.itertuples(index=False)):
        line = pos + 2
        key = row.id.strip()
        where = f"{path}: line {line} (id {key!r})"
        if not key:
            if not any(str(cell).strip() for cell in row):
                continue  # spreadsheet programs leave blank rows at the end
            raise SheetError(f"{path}: line {line} has an empty id")
        if key not in ids:
            raise SheetError(f"{where}: id not in the sample (was the sheet made from another "
                             "sample, or the id edited?)")
        if key in first_line:
            raise SheetError(f"{where}: id repeats line {first_line[key]}")
        first_line[key] = line
        values = _row_labels(row, where)
        for column, value in values.items():
            out.at[ids[key], column] = value
    out["labeled"] = out["answer_language"].notna()
    out["fidelity"] = pd.array(
        [fidelity(a, q) if pd.notna(a) else pd.NA
         for a, q in zip(out["answer_language"], sample[lang_col])], dtype="boolean")
    return out


def count_labeled(labels: pd.DataFrame) -> int:
    """Rows of an imported sheet (import_sheet's frame) with any label."""
    return int(labels[list(LABEL_COLUMNS)].notna().any(axis=1).sum())


def import_given_sheet(path: str | os.PathLike, sample: pd.DataFrame, **kwargs) -> pd.DataFrame:
    """import_sheet for a sheet the params name: a sheet without a single label is an error
    (a blank export given by mistake, or the labels lost), never a silent run without labels."""
    labels = import_sheet(path, sample, **kwargs)
    if count_labeled(labels) == 0:
        raise SheetError(f"{path}: no row has a label (answer_language, matches_gold, correct "
                         "are all blank). Fill the sheet, or set 04_score_languages."
                         "annotation_sheet: null to run without annotations.")
    return labels


_SEPARATORS = (",", ";", "\t")


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """A sheet as text cells, whichever encoding and separator a spreadsheet program saved it
    with: UTF-8 (with or without BOM), UTF-16 with a BOM, else cp1252; `,`, `;` or tab (the
    one that splits the header into the known columns). SheetError, in one line, otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SheetError(f"{path}: cannot read the sheet: {exc.strerror or exc}") from None
    if not data.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
        raise SheetError(f"{path}: the file is empty; expected the CSV that notebook 04 exported "
                         f"(columns id, ..., {', '.join(LABEL_COLUMNS)})")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = data.decode("utf-16"), "UTF-16"
    else:
        try:
            text, encoding = data.decode("utf-8-sig"), "UTF-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("cp1252", errors="replace"), "cp1252"
    header = text.splitlines()[0] if text.strip() else ""
    sep = max(_SEPARATORS, key=lambda s: (sum(c in header.split(s) for c in ("id", *LABEL_COLUMNS)),
                                          header.count(s)))
    try:
        # keep_default_na=False: "NA" is an answer here, not a missing value.
        sheet = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        shown = {",": "','", ";": "';'", "\t": "tab"}[sep]
        raise SheetError(f"{path}: not a readable sheet ({encoding}, {shown}-separated): "
                         f"{' '.join(str(exc).split())}; expected a CSV with columns id, ..., "
                         f"{', '.join(LABEL_COLUMNS)}") from None
    sheet.columns = [str(c).strip() for c in sheet.columns]
    return sheet


def _row_labels(row, where: str) -> dict[str, str]:
    """The filled label cells of one sheet row, normalised; blank cells are left out."""
    values = {}
    answer = row.answer_language.strip()
    if answer:
        try:
            values["answer_language"] = answer_language_name(answer)
        except ValueError as exc:
            raise SheetError(f"{where}: answer_language: {exc}") from None
    for column in ("matches_gold", "correct"):
        cell = getattr(row, column).strip()
        if not cell:
            continue
        if cell.lower() not in ("true", "false", "na"):
            raise SheetError(f"{where}: {column} is {cell!r}; write true, false or NA "
                             "(or leave it blank if not annotated yet)")
        values[column] = "NA" if cell.lower() == "na" else cell.lower()
    return values


__all__ = ["annotation_weights", "inclusion_probabilities", "systematic_pps",
           "annotation_sample", "export_sheet", "write_sheet", "import_sheet", "answer_language_name",
           "SheetError", "PAPER_LANG_WEIGHTS", "read_sheet", "labels_held", "place_blank_sheet",
           "import_given_sheet", "count_labeled"]
