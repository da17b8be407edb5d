"""Notebook 04: score every response's language and draw the annotation sample (§3.2,
appendices B-C): the scored table that notebooks 05 and 07 estimate from. The scoring itself
(shared with notebook 07) is ifl/score.py.

`scored.parquet` has one row per (model, task_id, condition):
  response facts     model, task_id, condition, image (1/0), benchmark, lang, parallel_id, response
  model facts        kind (variant | llava), llm, vision, data_lang (Table 4's regressors)
  surrogate          lid_label, lid_parsed, fidelity_lid (0/1), correct_surrogate (0/1)
  annotation         labeled (0/1), sample_prob (pi, for EVERY row: DSL needs it),
                     fidelity_gold, correct_gold (NaN where not labeled, or answered NA)
  miniature only     fidelity_true, correct_true: the exact rule on every row (the oracle that
                     lets notebook 05 check DSL against the truth; never used by an estimator)

Both worlds go through the same sheet: the sample is exported for annotators and their sheet
is imported back (validated). A sheet named by `annotation_sheet` is imported in either world;
without one, in the miniature an exact annotator (the generator's word rule, with an optional
error rate) fills a copy (`annotation_sheet.simulated.csv`), and in paper-smoke a stand-in (the
fallback language identifier) does, only so that the code path runs. The blank sheet for people
is never written over a sheet holding labels (ifl.annotate.place_blank_sheet).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ifl.annotate import (LABEL_COLUMNS, annotation_sample, annotation_weights, export_sheet,
                          import_given_sheet, import_sheet, inclusion_probabilities,
                          place_blank_sheet, read_sheet, write_sheet)
from ifl.langid import Identifier
from ifl.params_schema import ScoreLanguages
from ifl.score import (accuracy_surrogate, identifier_settings, join_tasks, load_identifier_from,
                       miniature_gold, score_language)

MODEL_FACTS = ["model", "kind", "llm", "vision", "data_lang"]


def identifier_for(p: ScoreLanguages) -> tuple[Identifier, dict]:
    """The language identifier the params ask for (which one was used is its `.name`), and the
    settings that rebuild it (written as identifier.json for notebook 07)."""
    settings = identifier_settings(p.identifier, p.glotlid_source, p.glotlid_revision)
    identifier = load_identifier_from(settings)
    return identifier, {**settings, "name": identifier.name}


def score_responses(responses: pd.DataFrame, tasks: pd.DataFrame, models: pd.DataFrame,
                    identifier: Identifier) -> pd.DataFrame:
    """Responses joined with their tasks and models, with the surrogate language labels."""
    scored = join_tasks(responses, tasks)
    scored = scored.merge(tasks[["task_id", "question"]], on="task_id", how="left")  # for the sheet
    scored = scored.merge(models[MODEL_FACTS], on="model", how="left", validate="many_to_one")
    scored = score_language(scored, identifier)
    scored["correct_surrogate"] = accuracy_surrogate(scored["response"], scored["reference"])
    return scored


def draw_sample(scored: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The annotation sample (appendix B weights, exact inclusion probabilities) and pi for
    every row of `scored` (DSL's sample_prob)."""
    n = min(n, len(scored))
    pi = inclusion_probabilities(annotation_weights(scored).to_numpy(), n)
    sample = annotation_sample(scored, n, seed=seed)
    return sample, pi


def _fill_sheet(sheet_path, labels: pd.DataFrame, language: str, correct: str) -> None:
    """Write an annotator's answers into the exported sheet: answer_language from column
    `language` of `labels` (indexed like the sample), correct (and matches_gold) from the 1/0
    column `correct`."""
    sheet = read_sheet(sheet_path)
    by_id = labels.set_index(labels.index.astype(str))
    sheet["answer_language"] = sheet["id"].map(by_id[language])
    sheet["correct"] = sheet["id"].map(by_id[correct].map({1.0: "true", 0.0: "false"}))
    sheet["matches_gold"] = sheet["correct"]
    write_sheet(sheet, sheet_path)


def fill_sheet_exactly(sheet_path, sample: pd.DataFrame, *, error_rate: float, seed: int) -> pd.DataFrame:
    """Miniature annotator: answer language by the generator's exact word rule (wrong with
    probability `error_rate`), correctness by the exact rule. Writes the filled sheet."""
    gold = miniature_gold(sample, annotator_error_rate=error_rate, seed=seed)
    _fill_sheet(sheet_path, gold, "gold_lang", "correct_gold")
    return gold


def fill_sheet_stand_in(sheet_path, sample: pd.DataFrame) -> None:
    """paper-smoke only: a stand-in annotator (the surrogate's own labels) so that the import
    and DSL paths run on stand-in data. These labels carry no information about the truth."""
    _fill_sheet(sheet_path, sample, "lid_label", "correct_surrogate")


def attach_labels(scored: pd.DataFrame, sample: pd.DataFrame, pi: np.ndarray,
                  labels: pd.DataFrame) -> pd.DataFrame:
    """scored + labeled, sample_prob, fidelity_gold, correct_gold (from an imported sheet)."""
    out = scored.copy()
    out["sample_prob"] = pi
    out["labeled"] = 0
    out["fidelity_gold"] = np.nan
    out["correct_gold"] = np.nan
    out["gold_parsed"] = None
    got = labels[labels["labeled"]]
    out.loc[got.index, "labeled"] = 1
    out.loc[got.index, "gold_parsed"] = got["answer_language"].astype(object)
    out.loc[got.index, "fidelity_gold"] = got["fidelity"].astype(float)
    correct = labels["correct"].map({"true": 1.0, "false": 0.0})  # NA (no coherent output) -> NaN
    out.loc[labels.index, "correct_gold"] = correct.astype(float)
    return out


def annotate(scored: pd.DataFrame, p: ScoreLanguages, *, world: str, seed: int,
             sheet_path) -> pd.DataFrame:
    """Draw the sample, export its sheet, have it filled (miniature: exact rule; paper: the
    annotators' sheet from params, or the smoke stand-in), import it, attach the labels."""
    scored = scored.reset_index(drop=True)
    sample, pi = draw_sample(scored, p.annotation_n, seed)
    blank = place_blank_sheet(sample, sheet_path)
    if Path(blank) != Path(sheet_path):
        used = "" if p.annotation_sheet is not None else (
            " (not used: set 04_score_languages.annotation_sheet to it to import its labels)")
        print(f"{sheet_path} holds labels and is kept{used}; the blank sheet went to {blank}")
    simulated = Path(sheet_path).with_name(f"{Path(sheet_path).stem}.simulated.csv")
    if p.annotation_sheet is not None:  # people's labels, in either world
        labels = import_given_sheet(p.annotation_sheet, sample)
        print(f"imported {int(labels['labeled'].sum())} labeled rows from {p.annotation_sheet}")
    elif world == "miniature" or p.simulate_annotations:
        export_sheet(sample, simulated, keep_labels=False)  # the simulated annotator's own copy
        if world == "miniature":
            fill_sheet_exactly(simulated, sample, error_rate=p.mini_annotator_error_rate, seed=seed)
        else:
            fill_sheet_stand_in(simulated, sample)
        labels = import_sheet(simulated, sample)
    else:
        labels = pd.DataFrame({"labeled": False, **{c: pd.NA for c in LABEL_COLUMNS},
                               "fidelity": pd.NA}, index=sample.index)
    out = attach_labels(scored, sample, pi, labels)
    if world == "miniature":  # the oracle: exact rule, no annotator error, every row
        truth = miniature_gold(scored, annotator_error_rate=0.0, seed=seed)
        out["fidelity_true"] = truth["fidelity_gold"].to_numpy()
        out["correct_true"] = truth["correct_gold"].to_numpy()
    return out


def confusion(scored: pd.DataFrame) -> pd.DataFrame:
    """Surrogate (lid_parsed) against gold (gold_parsed) on the labeled rows: counts."""
    lab = scored[scored["labeled"] == 1]
    return pd.crosstab(lab["gold_parsed"].fillna("?"), lab["lid_parsed"], rownames=["gold"],
                       colnames=["identifier"])


def surrogate_errors(scored: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Where the identifier disagrees with gold fidelity, among labeled rows, grouped by `by`."""
    lab = scored[scored["labeled"] == 1].copy()
    lab["wrong"] = (lab["fidelity_lid"] != lab["fidelity_gold"]).astype(float)
    return lab.groupby(by).agg(labeled=("wrong", "size"), disagreement=("wrong", "mean"))


LENGTH_BINS = ([-1, 0, 2, 5, 10, 1000], ["0", "1-2", "3-5", "6-10", ">10"])  # words


def length_bin(scored: pd.DataFrame) -> pd.Series:
    """Response length in words, binned (the paper: the identifier errs more on short texts)."""
    lengths = scored["response"].fillna("").str.split().str.len()
    return pd.cut(lengths, LENGTH_BINS[0], labels=LENGTH_BINS[1])


def empty_note(scored: pd.DataFrame) -> str:
    empty = scored["response"].fillna("").str.strip() == ""
    label = scored.loc[empty, "lid_label"].iloc[0] if empty.any() else "-"
    return f"{len(scored):,} responses scored; {int(empty.sum())} empty (label {label})"


def plot_fidelity_by_language(table: pd.DataFrame, benchmarks: list[str]):
    """Mean surrogate fidelity over models per query language, image vs text, for the first two
    benchmarks."""
    import matplotlib.pyplot as plt

    by_lang = table.reset_index().groupby(["lang", "benchmark"])[["image", "text"]].mean()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, bench in zip(axes, sorted(benchmarks)[:2]):
        part = by_lang.xs(bench, level="benchmark") if bench in by_lang.index.get_level_values(1) else by_lang
        part.plot.bar(ax=ax, rot=0)
        ax.set_title(f"{bench}: mean surrogate fidelity over models"); ax.set_ylim(0, 1.05)
        ax.set_xlabel("query language")
    return fig


def plot_identifier_errors_by_length(scored: pd.DataFrame):
    """Miniature: share of rows where the identifier is wrong about fidelity (vs the truth), by
    benchmark x response length."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    truth_gap = (scored.assign(wrong=(scored["fidelity_lid"] != scored["fidelity_true"]).astype(float))
                 .groupby(["benchmark", "length_bin"], observed=True)["wrong"].mean().unstack())
    fig, ax = plt.subplots(figsize=(6, 2.8))
    sns.heatmap(truth_gap, annot=True, fmt=".2f", cmap="Reds", vmin=0, vmax=1, ax=ax)
    ax.set_title("identifier wrong about fidelity (all rows, vs truth)")
    ax.set_xlabel("response length (words)")
    return fig


def summary(scored: pd.DataFrame, by_model: pd.DataFrame, identifier: Identifier) -> tuple[str, dict]:
    """(headline, metrics): identifier, labels, agreement with gold, naive IFL."""
    labeled = scored[scored["labeled"] == 1]
    naive_ifl = by_model["ifl"].mean() if "ifl" in by_model else float("nan")
    agreement = (float((labeled["fidelity_lid"] == labeled["fidelity_gold"]).mean())
                 if len(labeled) else float("nan"))
    headline = (f"{len(scored):,} responses scored with {identifier.name.split(' (')[0]}; "
                f"{len(labeled)} labeled; identifier agrees with gold fidelity on {agreement:.0%}; "
                f"naive IFL (mean over models) {naive_ifl:+.3f}")
    return headline, dict(identifier=identifier.name, n_scored=len(scored), n_labeled=int(len(labeled)),
                          agreement=agreement, naive_ifl=float(naive_ifl))
