"""The findings table: ifl/findings.py (rows, the optional note, agrees) and the rows notebooks
05 and 07 compute (ifl/stages), on small synthetic frames with a known answer."""
from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

from ifl import findings, paper
from ifl.findings import agrees_with, read_findings, write_finding
from ifl.params_schema import Steering
from ifl.stages import dsl_regressions as stage05
from ifl.stages import steering as stage07

LLAVA7B_PAPER = (-0.059 - 0.137) / 2  # the paper's two reported extremes for LLaVA-1.5-7B (§3.3)


def test_doctests():
    assert doctest.testmod(findings).failed == 0


def test_agrees_needs_the_papers_sign_and_an_interval_that_excludes_zero():
    assert agrees_with(0.17, 0.1, 0.05, 0.15)
    assert not agrees_with(0.17, 0.1, -0.01, 0.2)      # interval includes 0
    assert not agrees_with(-0.2, 0.1, 0.05, 0.15)      # opposite sign
    assert not agrees_with(-0.2, float("nan"), None, None)  # not estimated


def test_note_is_written_and_an_older_table_without_it_still_reads(tmp_path):
    write_finding(tmp_path, "a", "0.1", 0.2, 0.1, 0.3, True, note="why")
    assert read_findings(tmp_path).loc[0, "note"] == "why"
    pd.DataFrame([{"finding": "b", "paper": "1", "run": 1.0, "ci_low": 0.5, "ci_high": 1.5,
                   "agrees": "True"}]).to_csv(tmp_path / "findings.csv", index=False)
    old = read_findings(tmp_path)
    assert old.loc[0, "note"] == "" and old.loc[0, "agrees"] is True
    write_finding(tmp_path, "a", "0.1", None, None, None, False, note="skipped")
    assert read_findings(tmp_path)[["finding", "note"]].values.tolist() == [["b", ""], ["a", "skipped"]]


def test_companion_shows_the_note_under_the_finding(tmp_path):
    from ifl.companion import findings_table

    path = write_finding(tmp_path, "IFL exists", "-0.098", -0.4, -0.5, -0.3, True, note="vicuna-clip-en, DSL")
    assert "IFL exists<br><small>vicuna-clip-en, DSL</small>" in findings_table(path)


# --- notebook 05 ------------------------------------------------------------------------------

def fig1_frame(cells) -> pd.DataFrame:
    """figure1_ifl.csv-shaped rows: (model, benchmark, estimate, ci_low, ci_high, note) DSL cells,
    each with a naive row far off (which the findings must not read)."""
    rows = []
    for model, bench, est, lo, hi, note in cells:
        rows.append(dict(model=model, benchmark=bench, estimator="dsl", estimate=est, ci_low=lo,
                         ci_high=hi, note=note))
        rows.append(dict(model=model, benchmark=bench, estimator="naive", estimate=9.0, ci_low=8.0,
                         ci_high=10.0, note=None))
    return pd.DataFrame(rows)


def test_ifl_exists_is_the_mean_of_the_llava_role_cells_with_a_conservative_interval():
    fig1 = fig1_frame([("vicuna-clip-en", "visit", -0.3, -0.4, -0.2, None),
                       ("vicuna-clip-en", "llavaw", -0.5, -0.7, -0.3, None),
                       ("yi-clip-en", "visit", 0.5, 0.4, 0.6, None)])
    row = stage05.ifl_exists_finding(fig1)
    assert row["finding"] == stage05.IFL_EXISTS
    assert float(row["paper"]) == pytest.approx(LLAVA7B_PAPER, abs=5e-4)
    assert (row["run"], row["ci_low"], row["ci_high"]) == pytest.approx((-0.4, -0.55, -0.25))
    assert row["agrees"] is True and "vicuna-clip-en" in row["note"] and "mean over 2" in row["note"]
    # the off-the-shelf LLaVA-1.5-7B takes the role where the run has it
    both = pd.concat([fig1, fig1_frame([("llava-1.5-7b", "visit", -0.1, -0.15, 0.05, None)])])
    row = stage05.ifl_exists_finding(both)
    assert row["run"] == pytest.approx(-0.1) and row["agrees"] is False  # interval includes 0
    assert row["note"].startswith("llava-1.5-7b")


def test_ifl_exists_not_estimated_says_why():
    fig1 = fig1_frame([("vicuna-clip-en", "visit", np.nan, np.nan, np.nan, "skipped: 2 image / 3 text")])
    row = stage05.ifl_exists_finding(fig1)
    assert row["run"] is None and row["agrees"] is False and "skipped: 2 image / 3 text" in row["note"]
    row = stage05.ifl_exists_finding(fig1_frame([("yi-clip-zh", "visit", -0.3, -0.4, -0.2, None)]))
    assert row["run"] is None and "none of llava-1.5-7b, vicuna-clip-en" in row["note"]


def table4_frame() -> pd.DataFrame:
    """table4.csv-shaped rows of the literal specification: Chinese estimated, German skipped."""
    rows = []
    for factor, est, lo, hi in [("Image", -0.5, -0.6, -0.4), ("LLM", 0.10, 0.05, 0.15),
                                ("VE", 0.05, -0.01, 0.11), ("Data", -0.10, -0.20, -0.05)]:
        for outcome in ("fidelity", "accuracy"):
            rows.append(dict(language_set="Chinese", outcome=outcome, row=factor, estimator="dsl",
                             estimate=est if outcome == "fidelity" else -est, ci_low=lo, ci_high=hi,
                             n_labeled=400, note=""))
        rows.append(dict(language_set="Chinese", outcome="fidelity", row=factor, estimator="naive",
                         estimate=-9.0, ci_low=-10.0, ci_high=-8.0, n_labeled=400, note=""))
    for factor in ("Image", "LLM", "VE", "Data"):
        rows.append(dict(language_set="German", outcome="fidelity", row=factor, estimator="dsl",
                         n_labeled=12, note="skipped: labeled rows < min_labeled 5 in LLM=1, image: 2"))
    return pd.DataFrame(rows)


def test_table4_rows_take_the_dsl_fidelity_interaction_beside_the_paper():
    rows = {r["finding"]: r for r in stage05.table4_findings(table4_frame())}
    t4 = paper.table4().set_index(["language_set", "row"])
    assert len(rows) == 6
    llm, ve, data = (rows[stage05.table4_finding_name(f, "Chinese")] for f in ("LLM", "VE", "Data"))
    assert llm["finding"].startswith("LLM (Table 4, zh)")
    assert (llm["run"], llm["ci_low"], llm["ci_high"]) == pytest.approx((0.10, 0.05, 0.15))
    assert float(llm["paper"]) == t4.loc[("Chinese", "LLM"), "ifl_effect"]
    assert llm["agrees"] is True          # paper +0.17, interval above 0
    assert ve["agrees"] is False          # paper -0.20, ours +0.05 with 0 inside
    assert data["agrees"] is True         # paper -0.16, interval below 0
    for f in ("LLM", "VE", "Data"):       # German: too few labels
        r = rows[stage05.table4_finding_name(f, "German")]
        assert r["run"] is None and r["agrees"] is False and "skipped: labeled rows" in r["note"]
    assert all(stage05.table4_finding_name(f, s) in rows for f in ("LLM", "VE", "Data")
               for s in ("Chinese", "German"))


def test_notebook_05_rows_land_in_the_table(tmp_path):
    fig1 = fig1_frame([("vicuna-clip-en", "visit", -0.3, -0.4, -0.2, None)])
    for row in stage05.findings(fig1, table4_frame()):
        write_finding(tmp_path, **row)
    table = read_findings(tmp_path)
    assert len(table) == 7 and table["finding"].iloc[0] == stage05.IFL_EXISTS
    assert table["run"].isna().sum() == 3 and table["agrees"].tolist().count(True) == 3


# --- notebook 07 ------------------------------------------------------------------------------

def steering_frames(steered_fidelity, n_items: int = 20):
    """scored rows (image 0, text 1 in every cell) and steered rows for models m1, m2 x
    benchmark b x languages de, zh; steered_fidelity(model, item) gives the steered value."""
    base, steered = [], []
    for model in ("m1", "m2"):
        for lang in ("de", "zh"):
            for k in range(n_items):
                cell = dict(model=model, benchmark="b", lang=lang, parallel_id=f"p{k}")
                base += [{**cell, "image": 1, "fidelity_lid": 0}, {**cell, "image": 0, "fidelity_lid": 1}]
                steered.append({**cell, "fidelity_lid": steered_fidelity(model, k)})
    return pd.DataFrame(base), pd.DataFrame(steered)


def test_steering_effect_is_table5s_mean_diff_over_models_with_an_item_bootstrap():
    base, steered = steering_frames(lambda m, k: 1 if m == "m1" else k % 2)  # m1 +1, m2 +0.5
    got = stage07.steering_effect(base, steered, n_boot=500)
    assert got["estimate"] == pytest.approx(0.75) and got["n_models"] == 2 and got["n_items"] == 20
    table = stage07.ifl_table(base, steered)
    assert got["estimate"] == pytest.approx(table[table["benchmark"] == "average"]["diff"].mean())
    assert 0.5 < got["ci_low"] < 0.75 < got["ci_high"] < 1.0  # only m2's half-steered items vary
    row = stage07.steering_finding(base, steered, Steering(), seed=1, n_boot=500)
    assert row["finding"] == stage07.STEERING and row["agrees"] is True
    assert float(row["paper"]) == pytest.approx(paper.table5()["diff"].mean(), abs=5e-4)


def test_steering_that_changes_nothing_or_harms_does_not_agree():
    base, steered = steering_frames(lambda m, k: 0)
    row = stage07.steering_finding(base, steered, Steering(), n_boot=200)
    assert (row["run"], row["ci_low"], row["ci_high"], row["agrees"]) == (0.0, 0.0, 0.0, False)
    base, steered = steering_frames(lambda m, k: 1 if k % 3 == 0 else 0)  # +1/3 on average, items vary
    noisy = base.assign(fidelity_lid=np.where((base["image"] == 1) & (base["parallel_id"].isin(["p1", "p2"])),
                                              1, base["fidelity_lid"]))
    got = stage07.steering_effect(noisy, steered, n_boot=500)
    assert got["ci_low"] < got["estimate"] < got["ci_high"]
    harmful = steering_frames(lambda m, k: 0)[1]
    up = base.assign(fidelity_lid=1)  # the unsteered model was already faithful: steering costs 1
    row = stage07.steering_finding(up, harmful, Steering(), n_boot=200)
    assert row["run"] == pytest.approx(-1.0) and row["agrees"] is False
    assert "scale 1" in row["note"] and "not the paper's setting" not in row["note"]
    row = stage07.steering_finding(up, harmful, Steering(scale=4.0), n_boot=200)
    assert "not the paper's setting" in row["note"]
