"""Notebooks 03 (collect) and 04 (score) end to end in both worlds (the session's runs)."""
import pandas as pd

from ifl.collect import load_responses


def test_paper_smoke_collects_every_model_task_and_condition(smoke_run):
    models = pd.read_csv(smoke_run / "03_collect_responses/models.csv")
    assert len(models) == 4 + 14 and set(models["kind"]) == {"llava", "variant"}
    assert models.set_index("model").loc["llava-gemma-2b", "template"] == "gemma"
    responses = pd.read_parquet(smoke_run / "03_collect_responses/responses.parquet")
    n_tasks = responses["task_id"].nunique()
    assert len(responses) == len(models) * n_tasks * 2
    assert not responses.duplicated(["model", "task_id", "condition"]).any()
    # the parts under runs/<run>/responses/ are the store a rerun resumes from
    stored = load_responses(smoke_run / "responses", "bakllava")
    assert len(stored) == n_tasks * 2


def test_paper_smoke_scores_with_fallback_and_stand_in_annotations(smoke_run):
    scored = pd.read_parquet(smoke_run / "04_score_languages/scored.parquet")
    assert {"fidelity_lid", "labeled", "sample_prob", "fidelity_gold", "llm", "data_lang"} <= set(scored)
    assert scored["labeled"].sum() == 1000 and abs(scored["sample_prob"].sum() - 1000) < 1e-6
    assert "fidelity_true" not in scored  # the paper world has no oracle
    stage = pd.read_json(smoke_run / "04_score_languages/stage.json", typ="series")
    assert "lid.176" in stage["metrics"]["identifier"]  # GlotLID cannot be had offline: said so
    assert (smoke_run / "04_score_languages/annotation_sheet.csv").exists()


def test_default_small_collects_and_scores_the_variants(default_small_run):
    responses = pd.read_parquet(default_small_run / "03_collect_responses/responses.parquet")
    assert responses["model"].nunique() == 14
    assert len(responses) == 14 * 3 * 2 * 6 * 2  # models x items x benchmarks x languages x conditions
    scored = pd.read_parquet(default_small_run / "04_score_languages/scored.parquet")
    assert scored["labeled"].sum() == 40
    assert scored["fidelity_true"].notna().all() and scored["correct_true"].notna().all()
    index = (default_small_run.output_root / "rendered/default/index.html").read_text()
    assert "responses scored" in index
