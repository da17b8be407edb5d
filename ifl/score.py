"""Scoring a response: its language (the surrogate), fidelity, accuracy and, where known, the
gold truth. Notebook 04 scores every response with it, and notebook 07 rescores its steered
responses with the same functions and the identifier notebook 04 recorded.

One scored row per (model, task_id, condition), with:
  lid_label, lid_parsed, fidelity_lid   language ID (GlotLID v3 or its fallback) and the paper's
                                        parse rule (appendix C); the surrogate DSL corrects
  gold_parsed, fidelity_gold            the truth where an expert (paper) or the exact word rule
                                        (miniature) says it; NaN where unlabeled
  correct_gold, correct_surrogate       answer accuracy: miniature exact rule / a cheap surrogate
                                        (paper: annotators / optional LLM judge)
  image                                 1 for the image condition, 0 for the text description

>>> parsed_of_iso("de"), parsed_of_iso("none")
('german', 'none')
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ifl.data.languages import LANGUAGES
from ifl.langid import Identifier, fidelity, parse_glotlid

TASK_COLUMNS = ["parallel_id", "benchmark", "lang", "reference"]
OPTIONAL_TASK_COLUMNS = ["question_type", "answer_key", "scene", "category"]


def parsed_of_iso(code: str) -> str:
    """The parse-rule name of an ISO code (or 'none' for no language)."""
    return "none" if code == "none" else LANGUAGES[code].parsed


def join_tasks(responses: pd.DataFrame, tasks: pd.DataFrame) -> pd.DataFrame:
    """Responses with the task facts they are scored against; a response whose task is unknown
    is an error naming it (it would silently vanish from every estimate otherwise)."""
    keep = ["task_id", *TASK_COLUMNS, *[c for c in OPTIONAL_TASK_COLUMNS if c in tasks.columns]]
    out = responses.merge(tasks[keep], on="task_id", how="left", validate="many_to_one",
                          indicator=True)
    missing = out["_merge"] != "both"
    if missing.any():
        raise KeyError(f"{int(missing.sum())} responses name tasks not in the task table, e.g. "
                       f"{out.loc[missing, 'task_id'].iloc[0]!r}")
    out = out.drop(columns="_merge")
    out["image"] = (out["condition"] == "image").astype(int)
    return out


def score_language(scored: pd.DataFrame, identifier: Identifier) -> pd.DataFrame:
    """Add lid_label, lid_parsed and fidelity_lid (1 if the parsed language is the query's)."""
    out = scored.copy()
    out["lid_label"] = identifier.predict(out["response"].fillna("").tolist())
    out["lid_parsed"] = [parse_glotlid(label) for label in out["lid_label"]]
    out["fidelity_lid"] = [int(fidelity(p, q)) for p, q in zip(out["lid_parsed"], out["lang"])]
    out.attrs["identifier"] = identifier.name
    return out


def miniature_gold(scored: pd.DataFrame, *, annotator_error_rate: float, seed: int) -> pd.DataFrame:
    """Gold labels from the miniature's exact word rule, as an annotator would give them: with
    probability `annotator_error_rate` the annotator names a wrong language (uniform over the
    others). Also exact accuracy: the short answer's concept is in the response (shapes_vqa), or
    every object's colour and shape are mentioned (shapes_describe)."""
    from ifl.data.miniature import gold_language

    out = scored.copy()
    rng = np.random.default_rng(seed)
    truth = [gold_language(r or "") for r in out["response"]]
    options = sorted(set(LANGUAGES) & set(out["lang"])) + ["none"]
    annotated = []
    for lang in truth:
        if rng.random() < annotator_error_rate:
            lang = rng.choice([o for o in options if o != lang])
        annotated.append(lang)
    out["gold_true_lang"] = truth
    out["gold_lang"] = annotated
    out["gold_parsed"] = [parsed_of_iso(c) for c in annotated]
    out["fidelity_gold"] = (out["gold_lang"] == out["lang"]).astype(float)
    out["correct_gold"] = [float(_mini_correct(r, row)) for r, (_, row) in
                           zip(out["response"].fillna(""), out.iterrows())]
    return out


def accuracy_surrogate(responses: pd.Series, references: pd.Series) -> list[float]:
    """A cheap surrogate for accuracy (the paper's was a GPT-4o judge): 1.0 if the reference
    answer appears verbatim (case-insensitive) in the response. It misses paraphrases and
    inflections, which DSL corrects.

    >>> accuracy_surrogate(pd.Series(["A Red square", None]), pd.Series([" red ", "x"]))
    [1.0, 0.0]
    """
    return [float(bool(ref) and str(ref).strip().lower() in str(r).lower())
            for r, ref in zip(responses.fillna(""), references.fillna(""))]


def exact_fidelity(scored: pd.DataFrame) -> np.ndarray:
    """Miniature: 1.0 where the exact word rule finds the response in the query's language (no
    simulated annotator), else 0.0."""
    from ifl.data.miniature import gold_language

    return np.array([float(gold_language(r or "") == lang)
                     for r, lang in zip(scored["response"].fillna(""), scored["lang"])])


def identifier_settings(kind: str, source: str, revision: str | None) -> dict:
    """What picks a language identifier, as notebook 04 records it (identifier.json)."""
    return {"identifier": kind, "glotlid_source": source, "glotlid_revision": revision}


def load_identifier_from(settings: dict) -> Identifier:
    """The language identifier `settings` (identifier_settings) name: 'fallback' is the bundled
    one; 'glotlid' and 'auto' load GlotLID from its source ('auto' falls back when it cannot)."""
    from ifl.langid import load_fallback, load_identifier

    if settings["identifier"] == "fallback":
        return load_fallback()
    kwargs = {} if settings.get("glotlid_revision") is None else {"revision": settings["glotlid_revision"]}
    return load_identifier(settings["glotlid_source"], allow_fallback=settings["identifier"] == "auto",
                           **kwargs)


def _mini_correct(response: str, row: pd.Series) -> bool:
    from ifl.data.miniature import concepts

    found = concepts(response)
    key = row.get("answer_key")
    if isinstance(key, str) and key:
        return key in found
    scene = json.loads(row["scene"]) if isinstance(row.get("scene"), str) else None
    if not scene:
        return False
    wanted = {x for obj in scene["objects"] for x in (obj["color"], obj["shape"])}
    return wanted <= found


def fidelity_table(scored: pd.DataFrame, column: str = "fidelity_lid") -> pd.DataFrame:
    """Mean fidelity by model x benchmark x language x condition (image / text), with IFL =
    image - text, the naive (surrogate-only) effect of adding an image."""
    table = (scored.assign(condition=np.where(scored["image"] == 1, "image", "text"))
             .pivot_table(index=["model", "benchmark", "lang"], columns="condition",
                          values=column, aggfunc="mean"))
    if {"image", "text"} <= set(table.columns):
        table["ifl"] = table["image"] - table["text"]
    return table
