"""What the miniature's components can do in text, as long tables for component_metrics.csv.

- `crosslingual_probe`: facts given in language A, question asked in language B (text only):
  is the answer correct, and is it in B? Shared concepts across languages show as accuracy off
  the diagonal; the reply-language habit as fidelity.
- `fidelity_vs_target`: each backbone's text-only reply language per language beside the
  calibration target from real chat LLMs (ifl/data/miniature/calibration.py).
- `text_fidelity`: the same measurement for any causal LM or LLaVA (the LLaVA's LM is asked
  without an image), so `retention` can compare a backbone before and after stage 2.

Every table is long: one row per (component, metric, lang[, context_lang]) with a `value`.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ifl.data.miniature import concepts, gold_language, make_tasks
from ifl.mini.lm import EVAL_SEED_OFFSET, answer_text_only
from ifl.prompts import template


def _score(rows: list[dict], responses: list[str]) -> dict[str, float]:
    return {"accuracy": sum(r["answer_key"] in concepts(s) for r, s in zip(rows, responses)) / len(rows),
            "fidelity": sum(gold_language(s) == r["lang"] for r, s in zip(rows, responses)) / len(rows),
            "in_english": sum(gold_language(s) == "en" for s in responses) / len(rows)}


def text_fidelity(model, tokenizer, langs: Sequence[str], n_scenes: int, seed: int,
                  component: str, context_langs: Sequence[str] | None = None,
                  chat_template: str = "llava_hf", short_hint: bool = False) -> pd.DataFrame:
    """Text-only answers to held-out `shapes_vqa` questions in every language of `langs`, the
    scene described in each of `context_langs` (None: in the question's own language).
    Long rows: component, metric (accuracy / fidelity / in_english), lang, context_lang, value, n.
    Works for a causal LM and for a LLaVA (`generate` without pixel values reads text only)."""
    rows_out = []
    for context in (context_langs or [None]):
        tasks = make_tasks(n_scenes, list(langs), seed=seed + EVAL_SEED_OFFSET,
                           benchmarks=["shapes_vqa"], short_hint=short_hint,
                           description_lang=context or "query")
        rows = tasks.to_dict("records")
        responses = answer_text_only(model, tokenizer, rows, template(chat_template))
        for lang in langs:
            mine = [(r, s) for r, s in zip(rows, responses) if r["lang"] == lang]
            scores = _score([r for r, _ in mine], [s for _, s in mine])
            rows_out += [{"component": component, "metric": m, "lang": lang,
                          "context_lang": context or lang, "value": v, "n": len(mine)}
                         for m, v in scores.items()]
    return pd.DataFrame(rows_out)


def crosslingual_probe(model, tokenizer, langs: Sequence[str], n_scenes: int, seed: int,
                       component: str) -> pd.DataFrame:
    """`text_fidelity` for every (context language A, question language B) pair of `langs`."""
    return text_fidelity(model, tokenizer, langs, n_scenes, seed, component, context_langs=langs)


def crosslingual_summary(probe: pd.DataFrame) -> pd.DataFrame:
    """Per component: accuracy and fidelity with the facts in the question's language (same)
    and in another language (cross), from `crosslingual_probe` rows."""
    p = probe.assign(pair=(probe["lang"] == probe["context_lang"]).map({True: "same", False: "cross"}))
    out = p.pivot_table(index="component", columns=["metric", "pair"], values="value", aggfunc="mean")
    out.columns = [f"{m}_{pair}" for m, pair in out.columns]
    return out.reset_index()


def fidelity_vs_target(fidelity: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
    """Measured text-only reply language (rows of `text_fidelity`, context in the question's
    language) beside the calibration targets (`calibration.targets()`): one row per backbone x
    language with fidelity, in_english, target_in_lang, target_in_english."""
    own = fidelity[fidelity["lang"] == fidelity["context_lang"]]
    wide = own.pivot_table(index=["component", "lang"], columns="metric", values="value").reset_index()
    wide = wide.rename(columns={"component": "backbone"})
    return wide.merge(targets[["backbone", "lang", "target_in_lang", "target_in_english"]],
                      on=["backbone", "lang"], how="left")


def retention(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Text-only fidelity and accuracy of each variant's LM after stage 2 beside its backbone's
    before: `before` rows of the backbones (component = backbone), `after` rows of the variants
    with a `backbone` column. One row per variant x language x metric: before, after, change."""
    b = before[before["lang"] == before["context_lang"]].rename(
        columns={"component": "backbone", "value": "before"})[["backbone", "metric", "lang", "before"]]
    a = after[after["lang"] == after["context_lang"]].rename(
        columns={"component": "variant", "value": "after"})[["variant", "backbone", "metric", "lang", "after"]]
    out = a.merge(b, on=["backbone", "metric", "lang"], how="left")
    return out.assign(change=out["after"] - out["before"])


def _long(table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """component_metrics.csv rows (component, kind, metric, lang, value) plus the extra columns."""
    return table.assign(kind=kind)


def component_report(paths: dict[str, str], backbones: Sequence[str], langs: Sequence[str], *,
                     n_scenes: int, probe_scenes: int, seed: int) -> pd.DataFrame:
    """Rows for component_metrics.csv about each backbone LM in `paths`:
    kind lm_text (text-only accuracy / fidelity / in_english per language, plus target_in_lang and
    target_in_english from calibration.targets()), lm_crosslingual (`crosslingual_probe` on
    `probe_scenes` scenes per language pair), lm_probe (`reply_language_probe` by site, metric
    probe_accuracy / probe_majority, with `site` and `depth` columns)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ifl.data.miniature.calibration import targets
    from ifl.mini.probe import reply_language_probe
    from ifl.prompts import query

    target = targets(list(langs))
    frames = []
    for name in backbones:
        tokenizer = AutoTokenizer.from_pretrained(paths[name])
        model = AutoModelForCausalLM.from_pretrained(paths[name]).eval()
        own = text_fidelity(model, tokenizer, langs, n_scenes, seed, name)
        frames.append(_long(own, "lm_text"))
        mine = target[target["backbone"] == name]
        for metric in ("target_in_lang", "target_in_english"):
            frames.append(pd.DataFrame({"component": name, "kind": "lm_text", "metric": metric,
                                        "lang": mine["lang"], "context_lang": mine["lang"],
                                        "value": mine[metric]}))
        frames.append(_long(crosslingual_probe(model, tokenizer, langs, probe_scenes, seed, name),
                            "lm_crosslingual"))
        tasks = make_tasks(n_scenes, list(langs), seed=seed + EVAL_SEED_OFFSET, benchmarks=["shapes_vqa"])
        prompts = [query(template("llava_hf"), q, image=False, description=d)
                   for q, d in zip(tasks["question"], tasks["description"])]
        probe = reply_language_probe(model, tokenizer, prompts, seed=seed, component=name)
        for metric in ("accuracy", "majority"):
            frames.append(pd.DataFrame({"component": name, "kind": "lm_probe", "metric": f"probe_{metric}",
                                        "lang": "", "site": probe["site"], "depth": probe["depth"],
                                        "value": probe[metric], "note": probe["reply_langs"]}))
    return pd.concat(frames, ignore_index=True)


def variant_text_fidelity(variants: pd.DataFrame, langs: Sequence[str], *, n_scenes: int,
                          seed: int) -> pd.DataFrame:
    """`text_fidelity` of each trained variant's LM (rows of notebook 02's variants table: variant,
    llm, model_dir), asked without an image; adds the `backbone` column `retention` needs."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    frames = []
    for row in variants.itertuples():
        model = LlavaForConditionalGeneration.from_pretrained(row.model_dir).eval()
        tokenizer = AutoProcessor.from_pretrained(row.model_dir).tokenizer
        frames.append(text_fidelity(model, tokenizer, langs, n_scenes, seed, row.variant)
                      .assign(backbone=row.llm))
    return pd.concat(frames, ignore_index=True)


def stage2_retention(component_metrics: pd.DataFrame, variants: pd.DataFrame, langs: Sequence[str],
                     *, n_scenes: int, seed: int) -> pd.DataFrame:
    """component_metrics.csv rows (kind stage2_retention) of every variant: text-only accuracy,
    fidelity and in_english per language before (its backbone, from the lm_text rows of
    `component_report`) and after stage 2, metric names `<metric>_before/_after/_change`."""
    before = component_metrics[(component_metrics["kind"] == "lm_text")
                               & component_metrics["metric"].isin(["accuracy", "fidelity", "in_english"])]
    table = retention(before, variant_text_fidelity(variants, langs, n_scenes=n_scenes, seed=seed))
    long = table.melt(id_vars=["variant", "backbone", "metric", "lang"],
                      value_vars=["before", "after", "change"], var_name="when")
    return pd.DataFrame({"component": long["variant"], "kind": "stage2_retention",
                         "metric": long["metric"] + "_" + long["when"], "lang": long["lang"],
                         "value": long["value"], "backbone": long["backbone"]})
