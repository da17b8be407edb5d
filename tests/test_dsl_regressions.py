"""Notebook 05's logic (ifl/regress.py, ifl/stages/dsl_regressions.py) on small synthetic data with a known truth."""
from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from ifl import paper, regress
from ifl.stages import dsl_regressions as stage05
from ifl.params_schema import DslRegressions

FAST = DslRegressions(learner="linear", cross_fit=5, sample_split=2, min_clusters=10, min_labeled=5)
VARIANTS = [(llm, vision, data) for llm in ("vicuna", "yi", "leo") for vision in ("clip", "dinov2")
            for data in ("en", "zh", "de")
            if not (llm == "yi" and data == "de") and not (llm == "leo" and data == "zh")]


def true_ifl(llm: str, vision: str, data: str, lang: str) -> float:
    """The simulated image effect on fidelity: -0.5 for Vicuna/CLIP/English, +0.2 with the
    target-language LLM, -0.1 with DINOv2, +0.3 with target-language data."""
    target = {"zh": "yi", "de": "leo"}.get(lang)
    return (-0.5 + 0.2 * (llm == target) - 0.1 * (vision == "dinov2")
            + 0.3 * (data == lang and lang != "en"))


def synthetic(n_items: int = 60, langs=("zh", "de"), variants=VARIANTS, label_share: float = 0.4,
              seed: int = 0) -> pd.DataFrame:
    """scored.parquet-shaped rows: every variant x item x language x condition. The surrogate
    misreads short (image-condition) answers as the wrong language 30% of the time, so a naive
    IFL is too negative; labels are a Poisson sample, German oversampled 2x."""
    rng = np.random.default_rng(seed)
    rows = []
    for llm, vision, data in variants:
        for item in range(n_items):
            for lang in langs:
                for image in (0, 1):
                    rows.append({"model": f"{llm}-{vision}-{data}", "kind": "variant", "llm": llm,
                                 "vision": vision, "data_lang": data, "benchmark": "bench",
                                 "parallel_id": f"p{item}", "task_id": f"p{item}-{lang}",
                                 "lang": lang, "image": image,
                                 "p_true": 0.95 + image * true_ifl(llm, vision, data, lang)})
    df = pd.DataFrame(rows)
    n = len(df)
    df["fidelity_true"] = (rng.random(n) < df["p_true"]).astype(float)
    df["n_new_tokens"] = np.where(df["image"] == 1, 3, 20)
    misread = (df["n_new_tokens"] < 5) & (rng.random(n) < 0.3)
    df["fidelity_lid"] = np.where(misread, 0, df["fidelity_true"]).astype(int)
    df["correct_true"] = (rng.random(n) < 0.5 - 0.2 * df["image"]).astype(float)
    df["correct_surrogate"] = np.where(rng.random(n) < 0.1, 1 - df["correct_true"], df["correct_true"])
    weight = np.where(df["lang"] == "de", 2.0, 1.0)
    df["sample_prob"] = np.clip(label_share * n * weight / weight.sum(), 1e-6, 1)
    df["labeled"] = (rng.random(n) < df["sample_prob"]).astype(int)
    for gold, truth in (("fidelity_gold", "fidelity_true"), ("correct_gold", "correct_true")):
        df[gold] = df[truth].where(df["labeled"] == 1)
    return df.drop(columns="p_true")


@pytest.fixture(scope="module")
def data():
    return synthetic()


def test_doctests():
    assert doctest.testmod(regress).failed == 0
    assert doctest.testmod(stage05).failed == 0


def test_ols_matches_statsmodels_cluster_and_weights(data):
    d = data.iloc[:600]
    ours = regress.ols(d.assign(y=d["fidelity_true"]), "y ~ image", cluster="parallel_id")
    X = sm.add_constant(d["image"].astype(float))
    ref = sm.OLS(d["fidelity_true"], X).fit(cov_type="cluster", cov_kwds={
        "groups": pd.factorize(d["parallel_id"])[0], "use_correction": False, "df_correction": False})
    np.testing.assert_allclose(ours["estimate"], ref.params, atol=1e-10)
    np.testing.assert_allclose(ours["se"], ref.bse, rtol=1e-8)
    w = 1 / d["sample_prob"].to_numpy()
    ours_w = regress.ols(d.assign(y=d["fidelity_true"]), "y ~ image", weights=w)
    ref_w = sm.WLS(d["fidelity_true"], X, weights=w).fit(cov_type="HC0")
    np.testing.assert_allclose(ours_w["estimate"], ref_w.params, atol=1e-10)
    np.testing.assert_allclose(ours_w["se"], ref_w.bse, rtol=1e-8)


def test_choose_cluster_falls_back_to_finer_levels(data):
    assert regress.choose_cluster(data, "parallel_id", 10) == ("parallel_id", "parallel_id (60)")
    assert regress.choose_cluster(data, "parallel_id", 100) == ("task_id", "task_id (120)")
    col, note = regress.choose_cluster(data, "parallel_id", 10**6)
    assert col is None and note == f"rows ({len(data)})"


def test_group_effects_recover_a_known_ifl_where_the_naive_estimate_is_biased(data):
    sub = data[data["model"].isin(["vicuna-clip-en", "yi-clip-zh"]) & (data["lang"] == "zh")]
    eff = regress.group_effects(sub, ["model"], regress.OUTCOMES["fidelity"], FAST, seed=0)
    w = regress.wide(eff, ["model"]).set_index("model")
    assert set(w.index) == {"vicuna-clip-en", "yi-clip-zh"} and w["note"].isna().all()
    # the oracle is the truth of these rows; the simulated IFLs are -0.5 and -0.5+0.2+0.3 = 0
    assert w.loc["vicuna-clip-en", "oracle"] == pytest.approx(-0.5, abs=0.12)
    for model in w.index:
        row = w.loc[model]
        assert row["dsl_ci_low"] <= row["oracle"] <= row["dsl_ci_high"]
        assert row["naive_ci_high"] < row["oracle"]  # misread short answers: too much IFL
    recov = regress.recovery(eff, ["model"]).set_index("estimator")
    assert recov.loc["dsl", "coverage"] == 1.0 and recov.loc["naive", "coverage"] == 0.0


def test_pooled_fit_maps_each_group_to_its_own_coefficient(data):
    """Saturated pooled fit and one fit per group give the same OLS (naive, oracle) numbers,
    so the group -> term mapping is right; DSL differs only through the learner."""
    sub = data[data["lang"] == "de"]
    by = ["model", "lang"]
    pooled = regress.group_effects(sub, by, regress.OUTCOMES["fidelity"], FAST, seed=0)
    single = regress.group_effects(sub, by, regress.OUTCOMES["fidelity"],
                                       FAST.model_copy(update={"pooled": False}), seed=0)
    for est in ("naive", "oracle"):
        a = pooled[pooled["estimator"] == est].set_index("model")["estimate"]
        b = single[single["estimator"] == est].set_index("model")["estimate"]
        pd.testing.assert_series_equal(a.sort_index(), b.sort_index(), atol=1e-10)
    truth = sub.groupby(["model", "image"])["fidelity_true"].mean().unstack()
    oracle = pooled[pooled["estimator"] == "oracle"].set_index("model")["estimate"]
    np.testing.assert_allclose(oracle, (truth[1] - truth[0]).reindex(oracle.index), atol=1e-10)


def test_groups_without_enough_labels_are_skipped_with_a_note(data):
    sub = data[data["model"].isin(["vicuna-clip-en", "leo-clip-de"]) & (data["lang"] == "de")].copy()
    unlabeled = sub["model"] == "leo-clip-de"
    sub.loc[unlabeled, ["labeled"]] = 0
    sub.loc[unlabeled, ["fidelity_gold", "correct_gold"]] = np.nan
    eff = regress.group_effects(sub, ["model"], regress.OUTCOMES["fidelity"], FAST, seed=0)
    skipped = eff[eff["model"] == "leo-clip-de"]
    assert len(skipped) == 1 and skipped["estimate"].isna().all()
    assert skipped["note"].iloc[0].startswith("skipped: 0 image / 0 text labeled rows")
    assert eff[(eff["model"] == "vicuna-clip-en") & (eff["estimator"] == "dsl")]["estimate"].notna().all()
    # nothing labeled anywhere: every group skipped, no crash
    none = sub.assign(labeled=0, fidelity_gold=np.nan)
    eff = regress.group_effects(none, ["model"], regress.OUTCOMES["fidelity"], FAST, seed=0)
    assert len(eff) == 2 and eff["estimate"].isna().all() and eff["note"].str.startswith("skipped").all()


def test_a_failing_fit_is_reported_not_raised(data):
    sub = data[(data["model"] == "vicuna-clip-en") & (data["lang"] == "de")
               & data["parallel_id"].isin([f"p{i}" for i in range(30)])]
    p = FAST.model_copy(update={"cross_fit": 50, "min_clusters": 20})  # 30 clusters, 50 folds
    eff = regress.group_effects(sub, ["model"], regress.OUTCOMES["fidelity"], p, seed=0)
    assert len(eff) == 1 and eff["note"].iloc[0].startswith("not estimated:")


def test_design_data_builds_the_papers_factors(data):
    chinese = regress.design_data(data, "Chinese")
    assert set(chinese["lang"]) == {"zh"}
    assert set(chinese["model"]) == {f"{l}-{v}-{d}" for l in ("vicuna", "yi")
                                     for v in ("clip", "dinov2") for d in ("en", "zh")}
    facts = chinese.drop_duplicates("model").set_index("model")
    assert facts.loc["yi-dinov2-zh", ["LLM", "VE", "Data"]].tolist() == [1, 1, 1]
    assert facts.loc["vicuna-clip-en", ["LLM", "VE", "Data"]].tolist() == [0, 0, 0]
    german = regress.design_data(data, "German")
    assert set(german["llm"]) == {"vicuna", "leo"} and set(german["data_lang"]) == {"en", "de"}


def test_table4_terms_and_signs_match_the_paper_convention(data):
    t4 = regress.table4(data, FAST, seed=0, outcomes=("fidelity",))
    oracle = t4[t4["estimator"] == "oracle"].set_index(["language_set", "row"])
    assert oracle.loc[("Chinese", "LLM"), "term"] == "image:LLM"
    # simulated: +0.2 (LLM), -0.1 (VE), +0.3 (Data), positive = less IFL as in the paper's Table 4
    for lset in ("Chinese", "German"):
        assert oracle.loc[(lset, "LLM"), "estimate"] == pytest.approx(0.2, abs=0.12)
        assert oracle.loc[(lset, "VE"), "estimate"] == pytest.approx(-0.1, abs=0.12)
        assert oracle.loc[(lset, "Data"), "estimate"] == pytest.approx(0.3, abs=0.12)
    dsl = t4[t4["estimator"] == "dsl"].set_index(["language_set", "row"])
    assert {"Intercept", "image", "LLM", "VE", "Data", "image:LLM"} <= set(t4["term"])
    assert dsl.loc[("German", "LLM"), "ci_low"] < oracle.loc[("German", "LLM"), "estimate"] \
        < dsl.loc[("German", "LLM"), "ci_high"]
    literal = regress.table4(data, FAST, seed=0, outcomes=("fidelity",), main_effects=False)
    assert not {"LLM", "VE", "Data"} & set(literal["term"])  # the paper's equation: interactions only


@pytest.mark.parametrize("main_effects", [True, False])
def test_the_papers_literal_specification_is_the_one_beside_the_paper(data, main_effects):
    """table4_vs_paper sets the fit WITHOUT main effects beside the paper's numbers, whatever
    `main_effects` chose for table4.csv; a fit with main effects is refused there."""
    p = FAST.model_copy(update={"main_effects": main_effects})
    fits = stage05.table4_fits(data, p, seed=0, outcomes=("fidelity",))
    with_mains, without = (fits.ours, fits.other) if main_effects else (fits.other, fits.ours)
    assert {"LLM", "VE", "Data"} <= set(with_mains["term"])
    assert fits.literal is without
    beside = stage05.table4_beside_paper(fits.literal)
    assert len(beside) == 6 and beside.loc[0, "fidelity_paper"] == 0.17
    literal = stage05.dsl_factor_rows(without)
    mains = stage05.dsl_factor_rows(with_mains)
    for i, row in beside.iterrows():
        key = (row["language_set"], row["row"])
        assert row["fidelity_dsl"] == literal.loc[key, "estimate"]
    # the two specifications' interactions differ, so the check above can tell them apart
    assert not np.allclose(beside["fidelity_dsl"], [mains.loc[(r.language_set, r.row), "estimate"]
                                                    for r in beside.itertuples()])
    with pytest.raises(ValueError, match="has the main effects"):
        stage05.table4_beside_paper(with_mains)


def test_table4_with_too_few_labels_or_missing_factor_is_noted(data):
    few = data.assign(labeled=np.where(data["lang"] == "zh", 0, data["labeled"]))
    few["fidelity_gold"] = few["fidelity_gold"].where(few["labeled"] == 1)
    t4 = regress.table4(few, FAST, seed=0, outcomes=("fidelity",))
    chinese = t4[t4["language_set"] == "Chinese"]
    assert chinese["estimate"].isna().all() and chinese["note"].str.startswith("skipped").all()
    assert t4[(t4["language_set"] == "German") & (t4["estimator"] == "dsl")]["estimate"].notna().all()
    clip_only = data[data["vision"] == "clip"]
    t4 = regress.table4(clip_only, FAST, seed=0, outcomes=("fidelity",))
    ve = t4[(t4["language_set"] == "German") & (t4["row"] == "VE")]
    assert ve["note"].str.contains("no variant differs in VE").all()


def test_figure1_rows_prefer_off_the_shelf_models(data):
    rows, role = stage05.figure1_rows(data)
    assert role.startswith("trained variants") and len(rows) == len(data)
    llava = data.iloc[:80].assign(model="llava-1.5-7b", kind="llava")
    rows, role = stage05.figure1_rows(pd.concat([llava, data]))
    assert role == "off-the-shelf LLaVA models" and set(rows["model"]) == {"llava-1.5-7b"}
    order = stage05.model_order(["leo-clip-en", "llava-gemma-2b", "vicuna-dinov2-zh", "llava-1.5-7b"])
    assert order == ["llava-1.5-7b", "llava-gemma-2b", "vicuna-dinov2-zh", "leo-clip-en"]


def test_paper_values_use_our_names_and_proportions():
    fig1 = paper.figure1_reported()
    assert fig1["model"].notna().all() and set(fig1["benchmark"]) == {"visit", "llavaw"}
    assert fig1.set_index(["model", "benchmark"]).loc[("llava-1.5-7b", "visit"), "paper"] == pytest.approx(-0.059)
    t4 = paper.table4()
    assert list(t4["row"].unique()) == ["LLM", "VE", "Data"] and len(t4) == 6


def test_headline_states_the_key_numbers(data):
    fig1 = regress.group_effects(data[data["lang"] == "de"], ["model", "benchmark"],
                                     regress.OUTCOMES["fidelity"], FAST, seed=0)
    t4 = regress.table4(data, FAST, seed=0, outcomes=("fidelity",))
    line = stage05.headline(fig1, t4, regress.recovery(fig1, ["model", "benchmark"]))
    assert "truth inside the CI: DSL" in line and "Table 4 German LLM/VE/Data" in line
    assert "(paper +0.07/-0.11/-0.37)" in line


def test_figure1_leaves_english_queries_out_unless_asked():
    """An English reply to an English query is faithful either way: Figure 1 drops those rows by
    default (figure1_exclude_english), and keeps them when asked."""
    from ifl.stages.dsl_regressions import figure1_rows
    scored = pd.DataFrame({"kind": ["llava"] * 3 + ["variant"], "lang": ["en", "de", "zh", "de"],
                           "model": ["a", "a", "a", "v"]})
    rows, role = figure1_rows(scored)
    assert list(rows["lang"]) == ["de", "zh"] and role.startswith("off-the-shelf")
    assert list(figure1_rows(scored, exclude_english=False)[0]["lang"]) == ["en", "de", "zh"]


def test_mechanism_table_splits_each_factor_into_its_conditions_and_the_lms_language(data):
    """Balanced design, additive truth: the IFL difference between a factor's levels is the
    simulated interaction (LLM +0.2, VE -0.1, Data +0.3), the description condition does not
    move, and the LM columns average the variants' stage-2 retention rows of the set's language."""
    models = sorted(data["model"].unique())
    retention = pd.DataFrame([
        {"component": m, "kind": "stage2_retention", "metric": f"fidelity_{when}", "lang": lang,
         "value": (0.9 if m.endswith("-zh") else 0.5) if when == "after" else 0.8}
        for m in models for lang in ("zh", "de") for when in ("before", "after")])
    table = stage05.mechanism_table(data, retention).set_index(["language_set", "factor", "level"])
    truth = {"LLM": 0.2, "VE": -0.1, "Data": 0.3}
    for factor, effect in truth.items():
        moved = table.loc[("Chinese", factor, 1), "ifl"] - table.loc[("Chinese", factor, 0), "ifl"]
        assert moved == pytest.approx(effect, abs=0.08), factor
        assert table.loc[("Chinese", factor, 1), "text"] == pytest.approx(
            table.loc[("Chinese", factor, 0), "text"], abs=0.05)
    assert table.loc[("Chinese", "Data", 1), "lm_text_after_stage2"] == pytest.approx(0.9)
    assert table.loc[("Chinese", "Data", 0), "lm_text_after_stage2"] == pytest.approx(0.5)
    assert table.loc[("Chinese", "LLM", 0), "lm_text_before"] == pytest.approx(0.8)
    lines = stage05.mechanism_text(table.reset_index())
    assert len(lines) == 6 and lines[0].startswith("Chinese, LLM: with the image")
    # without notebook 02's probes the LM columns are empty, the rest is unchanged
    bare = stage05.mechanism_table(data, None)
    assert bare["lm_text_after_stage2"].isna().all() and len(bare) == len(table)
