"""Notebook 04: the scored table that notebooks 05 and 07 estimate from.

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

import numpy as np
import pandas as pd

from pathlib import Path

from ifl.annotate import (LABEL_COLUMNS, annotation_sample, annotation_weights, export_sheet,
                          import_given_sheet, import_sheet, inclusion_probabilities,
                          place_blank_sheet, read_sheet, write_sheet)
from ifl.langid import Identifier, load_fallback, load_identifier
from ifl.params_schema import ScoreLanguages
from ifl.score import join_tasks, miniature_gold, score_language

MODEL_FACTS = ["model", "kind", "llm", "vision", "data_lang"]


def identifier_for(p: ScoreLanguages) -> Identifier:
    """The language identifier the params ask for (which one was used is its `.name`)."""
    if p.identifier == "fallback":
        return load_fallback()
    source = p.glotlid_source
    if p.glotlid_revision is not None:
        return load_identifier(source, revision=p.glotlid_revision,
                               allow_fallback=p.identifier == "auto")
    return load_identifier(source, allow_fallback=p.identifier == "auto")


def score_responses(responses: pd.DataFrame, tasks: pd.DataFrame, models: pd.DataFrame,
                    identifier: Identifier) -> pd.DataFrame:
    """Responses joined with their tasks and models, with the surrogate language labels."""
    scored = join_tasks(responses, tasks)
    scored = scored.merge(tasks[["task_id", "question"]], on="task_id", how="left")  # for the sheet
    scored = scored.merge(models[MODEL_FACTS], on="model", how="left", validate="many_to_one")
    scored = score_language(scored, identifier)
    # A cheap surrogate for accuracy (the paper's was a GPT-4o judge): the reference answer
    # appears verbatim in the response. It misses paraphrases and inflections, which DSL corrects.
    scored["correct_surrogate"] = [
        float(bool(ref) and str(ref).strip().lower() in str(r).lower())
        for r, ref in zip(scored["response"].fillna(""), scored["reference"].fillna(""))]
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
