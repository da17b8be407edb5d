"""ifl.annotate: appendix B's weights, exact inclusion probabilities, and the annotation sheet."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ifl.annotate import (PAPER_LANG_WEIGHTS, SheetError, annotation_sample, annotation_weights,
                          answer_language_name, export_sheet, import_sheet,
                          inclusion_probabilities, systematic_pps)
from ifl.data.languages import PAPER_LANGUAGES


def responses(sizes: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """A fake response table: `sizes[benchmark]` rows each, languages cycling through all 14."""
    rows = []
    for bench, size in sizes.items():
        for i in range(size):
            lang = PAPER_LANGUAGES[(i + seed) % len(PAPER_LANGUAGES)]
            rows.append(dict(benchmark=bench, lang=lang, question=f"{bench} q{i} ({lang})",
                             response=f"answer {i}", reference=f"gold {i}"))
    return pd.DataFrame(rows, index=[f"r{i}" for i in range(len(rows))])


# ---- weights, exactly as appendix B -------------------------------------------------------

def test_paper_language_factors():
    assert dict(PAPER_LANG_WEIGHTS) == {"de": 4, "zh": 2, "hi": 2, "ro": 0.5, "ru": 0.5,
                                        "ur": 0.5}


def test_weights_are_inverse_benchmark_share_times_language_factor():
    df = responses({"maxm": 300, "llavaw": 60, "visit": 140})
    w = annotation_weights(df)
    share = {"maxm": 300 / 500, "llavaw": 60 / 500, "visit": 140 / 500}
    for (bench, lang), weight in zip(zip(df["benchmark"], df["lang"]), w):
        assert weight == pytest.approx(PAPER_LANG_WEIGHTS.get(lang, 1) / share[bench])
    # each benchmark gets the same total weight before the language factors
    plain = annotation_weights(df, lang_weights={})
    assert plain.groupby(df["benchmark"]).sum().to_numpy() == pytest.approx([500] * 3)


def test_inclusion_probabilities_sum_to_n_and_cap_at_one():
    pi = inclusion_probabilities([1, 1, 1, 1, 100, 50], 3)
    assert pi.sum() == pytest.approx(3) and pi.max() <= 1
    assert pi.tolist()[-2:] == [1.0, 1.0] and pi[:4] == pytest.approx([0.25] * 4)
    df = responses({"maxm": 900, "llavaw": 60, "visit": 525})
    assert inclusion_probabilities(annotation_weights(df), 1000).sum() == pytest.approx(1000)
    with pytest.raises(ValueError, match="cannot draw n=7"):
        inclusion_probabilities([1, 2, 0, 3, 4, 5, 6], 7)
    with pytest.raises(ValueError, match="non-negative"):
        inclusion_probabilities([1, -1], 1)


# ---- the draw ------------------------------------------------------------------------------

def test_sample_is_n_distinct_rows_with_the_recorded_pi():
    df = responses({"maxm": 800, "llavaw": 60, "visit": 525})
    sample = annotation_sample(df, 200, seed=3)
    assert len(sample) == 200 and sample.index.is_unique and sample.index.isin(df.index).all()
    pi = pd.Series(inclusion_probabilities(annotation_weights(df), 200), index=df.index)
    assert sample["sample_prob"].to_numpy() == pytest.approx(pi[sample.index].to_numpy())
    assert annotation_sample(df, 200, seed=3).index.equals(sample.index)  # seeded
    assert not annotation_sample(df, 200, seed=4).index.equals(sample.index)


def test_empirical_inclusion_frequencies_match_pi():
    df = responses({"maxm": 20, "llavaw": 6, "visit": 14})  # 40 rows, one capped at pi = 1
    pi = inclusion_probabilities(annotation_weights(df), 12)
    assert pi.max() == 1.0 and pi.sum() == pytest.approx(12)
    rng = np.random.default_rng(0)
    draws = 20_000
    counts = np.zeros(len(pi))
    for _ in range(draws):
        picked = systematic_pps(pi, rng)
        assert picked.size == 12 and np.unique(picked).size == 12
        counts[picked] += 1
    freq = counts / draws
    sd = np.sqrt(pi * (1 - pi) / draws)
    assert np.all(np.abs(freq - pi) <= 4.5 * sd + 1e-12), np.max(np.abs(freq - pi) / (sd + 1e-12))


def test_annotation_sample_uses_the_column_arguments():
    df = responses({"a": 30, "b": 10}).rename(columns={"benchmark": "bench", "lang": "query"})
    sample = annotation_sample(df, 5, seed=0, benchmark_col="bench", lang_col="query")
    assert len(sample) == 5


# ---- the sheet -----------------------------------------------------------------------------

@pytest.fixture
def sample():
    df = responses({"maxm": 30, "visit": 10})
    df.loc["r0", "response"] = 'Ein Haus, "alt"\nmit Garten'
    df.loc["r1", "response"] = "- 一个房子\n- 花园"
    return annotation_sample(df, 8, seed=1)


def fill(path, values: dict[str, dict[str, str]], drop: list[str] = ()):
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    for row_id, cells in values.items():
        for column, value in cells.items():
            sheet.loc[sheet["id"] == row_id, column] = value
    sheet = sheet[~sheet["id"].isin(drop)]
    sheet.to_csv(path, index=False, encoding="utf-8-sig")


def test_export_writes_a_bom_csv_with_the_sample_ids_and_empty_label_columns(sample, tmp_path):
    path = export_sheet(sample, tmp_path / "sheets" / "a.csv")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: spreadsheets then read UTF-8
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    assert list(sheet.columns) == ["id", "query_language", "question", "reference", "response",
                                   "answer_language", "matches_gold", "correct"]
    assert sheet["id"].tolist() == list(sample.index)
    assert (sheet[["answer_language", "matches_gold", "correct"]] == "").all().all()
    assert sheet["question"].tolist() == sample["question"].tolist()


def test_export_keeps_text_and_defuses_formulas(tmp_path):
    df = responses({"maxm": 3})
    df["response"] = ['Ein Haus, "alt"\nmit Garten', "- 一个房子\n- 花园", "=1+1"]
    sheet = pd.read_csv(export_sheet(df, tmp_path / "s.csv"), dtype=str, keep_default_na=False,
                        encoding="utf-8-sig")
    assert sheet["response"].tolist() == ['Ein Haus, "alt"\nmit Garten', " - 一个房子\n- 花园",
                                          " =1+1"]


def test_round_trip_partial_sheet(sample, tmp_path):
    path = export_sheet(sample, tmp_path / "a.csv")
    ids = list(sample.index)
    lang0 = sample.loc[ids[0], "lang"]
    other = "english" if lang0 != "en" else "german"
    fill(path, {ids[0]: dict(answer_language=lang0, matches_gold="TRUE", correct="na"),
                ids[1]: dict(answer_language=other, matches_gold="false", correct="NA"),
                ids[2]: dict(matches_gold="true")},  # gold match only, no language yet
         drop=[ids[3]])  # a row deleted from the sheet stays unlabeled
    labels = import_sheet(path, sample)
    assert labels.index.equals(sample.index)
    assert labels["labeled"].tolist() == [True, True] + [False] * (len(ids) - 2)
    assert labels.loc[ids[0], "fidelity"] and not labels.loc[ids[1], "fidelity"]
    assert labels["fidelity"].isna().sum() == len(ids) - 2
    assert labels.loc[ids[0], "matches_gold"] == "true" and labels.loc[ids[0], "correct"] == "NA"
    assert labels.loc[ids[2], "matches_gold"] == "true" and pd.isna(labels.loc[ids[2], "correct"])
    assert labels.loc[ids[1], "answer_language"] == other


def test_untouched_sheet_imports_as_unlabeled(sample, tmp_path):
    path = export_sheet(sample, tmp_path / "a.csv")
    with open(path, "a", encoding="utf-8") as f:
        f.write(",,,,,,,\n,,,,,,,\n")  # blank rows, as spreadsheet programs leave them
    labels = import_sheet(path, sample)
    assert not labels["labeled"].any() and labels["answer_language"].isna().all()


@pytest.mark.parametrize("given,name", [("de", "german"), ("DE", "german"), ("deu", "german"),
                                        ("deu_Latn", "german"), ("German", "german"),
                                        ("zh", "chinese"), ("cmn", "chinese"), ("iw", "hebrew"),
                                        ("ur", "urdu"), ("ar", "arabic"), ("fa", "arabic"),
                                        ("it", "other_latin"), ("other latin", "other_latin"),
                                        ("ko", "other"), ("none", "none"), (" ja ", "japanese")])
def test_answer_language_forms(given, name):
    assert answer_language_name(given) == name


ERRORS = [
    ("unknown id", lambda s: s.replace("\n", '\n"r999","de","q","ref","resp","","",""\n', 1),
     r"line 2 \(id 'r999'\): id not in the sample"),
    ("duplicate id", "dup", r"line \d+ \(id 'r\d+'\): id repeats line 2"),
    ("bad language", {"answer_language": "klingon"}, r"line 2 .*answer_language: unknown answer"),
    ("bad label", {"answer_language": "xx_Latn"}, r"line 2 .*malformed GlotLID label"),
    ("bad matches_gold", {"matches_gold": "yes"}, r"line 2 .*matches_gold is 'yes'; write true"),
    ("bad correct", {"correct": "0.5"}, r"line 2 .*correct is '0.5'; write true"),
    ("empty id", {"id": " "}, r"line 2 has an empty id"),
]


@pytest.mark.parametrize("what,change,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_import_errors_name_file_and_line(sample, tmp_path, what, change, message):
    path = export_sheet(sample, tmp_path / "bad.csv")
    if callable(change):
        path.write_text(change(path.read_text(encoding="utf-8-sig")), encoding="utf-8-sig")
    elif change == "dup":
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        pd.concat([sheet, sheet.iloc[[0]]]).to_csv(path, index=False, encoding="utf-8-sig")
    else:
        fill(path, {sample.index[0]: change})
    with pytest.raises(SheetError, match=message) as err:
        import_sheet(path, sample)
    assert str(path) in str(err.value)


def test_import_missing_columns(sample, tmp_path):
    path = tmp_path / "cols.csv"
    pd.DataFrame({"id": list(sample.index), "answer_language": "de"}).to_csv(path, index=False)
    with pytest.raises(SheetError, match=r"cols.csv: missing column\(s\) \['matches_gold'"):
        import_sheet(path, sample)


def test_rewritten_sheet_keeps_rows_with_carriage_returns(tmp_path):
    """A model's answer with a lone carriage return must not split its row when a filled sheet
    is written back (write_sheet quotes every text cell)."""
    from ifl.annotate import write_sheet

    sample = pd.DataFrame({"lang": ["de", "en"], "question": ["Was?", "What?"],
                           "response": ["eins\rzwei", "one"]}, index=[5, 9])
    path = export_sheet(sample, tmp_path / "s.csv")
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    sheet["answer_language"] = ["de", "en"]
    write_sheet(sheet, path)
    labels = import_sheet(path, sample)
    assert labels["labeled"].all() and labels["fidelity"].tolist() == [True, True]


def test_export_never_writes_over_a_sheet_holding_labels(sample, tmp_path):
    from ifl.annotate import labels_held, place_blank_sheet
    path = export_sheet(sample, tmp_path / "a.csv")
    assert labels_held(path) == 0
    export_sheet(sample, path)  # a blank sheet may be refreshed
    first = list(sample.index)[0]
    fill(path, {first: dict(answer_language="de")})
    before = path.read_bytes()
    assert labels_held(path) == 1
    with pytest.raises(SheetError, match="holds 1 labeled row.*not written over"):
        export_sheet(sample, path)
    blank = place_blank_sheet(sample, path)
    assert blank == tmp_path / "a.blank.csv" and labels_held(blank) == 0
    assert path.read_bytes() == before


def _sheet_text(sample, path) -> tuple[str, str]:
    """(text, first id) of an exported sheet with its first row labeled 'de'."""
    export_sheet(sample, path)
    first = list(sample.index)[0]
    fill(path, {first: dict(answer_language="de", correct="true")})
    return path.read_text(encoding="utf-8-sig"), first


@pytest.mark.parametrize("encoding,sep", [("utf-8-sig", ";"), ("cp1252", ","), ("utf-16", "\t"),
                                          ("utf-16", ";"), ("utf-8", ",")])
def test_import_reads_what_spreadsheet_programs_save(sample, tmp_path, encoding, sep):
    text, first = _sheet_text(sample.assign(response="café, déjà vu"), tmp_path / "a.csv")
    sheet = pd.read_csv(tmp_path / "a.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    saved = tmp_path / "saved.csv"
    sheet.to_csv(saved, index=False, sep=sep, encoding=encoding)  # utf-16 writes a BOM
    labels = import_sheet(saved, sample)
    assert labels["labeled"].sum() == 1 and labels.loc[first, "answer_language"] == "german"
    assert labels.loc[first, "correct"] == "true"


def test_empty_or_broken_sheet_fails_in_one_line(sample, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(SheetError) as err:
        import_sheet(empty, sample)
    assert str(empty) in str(err.value) and "is empty" in str(err.value)
    assert "\n" not in str(err.value)
    broken = tmp_path / "broken.csv"
    broken.write_text('id,answer_language,matches_gold,correct\n"a,b\n', encoding="utf-8")
    with pytest.raises(SheetError, match="not a readable sheet") as err:
        import_sheet(broken, sample)
    assert "\n" not in str(err.value)
