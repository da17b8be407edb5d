"""Notebook 08 (Beyond LLaVA) end to end in both worlds (the session's runs): every model's
audit through ifl.audit, the summary table, the figure, and the companion's links."""
import json

import pandas as pd


def check_beyond_llava(run, models, not_audited=()):
    stage = run / "08_beyond_llava"
    table = pd.read_csv(stage / "ifl_by_model.csv")
    assert list(table["model"]) == list(models)
    assert set(table.loc[~table["audited"], "model"]) == set(not_audited)
    for name in table.loc[table["audited"], "model"]:
        assert (stage / name / "report.html").is_file() and (stage / name / "fidelity.csv").is_file()
    done = table[table["audited"]]
    assert done["ifl"].between(-1, 1).all() and done["ifl_steered"].notna().all()
    assert json.loads((stage / "stage.json").read_text())["headline"].startswith("IFL")


def test_default_small_beyond_llava(default_small_run):
    check_beyond_llava(default_small_run, ["vicuna-clip-en", "yi-clip-zh", "leo-clip-de"])
    root = default_small_run.output_root
    assert (root / "paper_figures/default/08_ifl_per_model.png").exists()
    index = (root / "rendered/default/index.html").read_text()
    assert 'href="../../runs/default/08_beyond_llava/vicuna-clip-en/report.html"' in index


def test_paper_smoke_beyond_llava(smoke_run):
    check_beyond_llava(smoke_run, ["qwen2.5-vl-7b", "llava-onevision-7b", "idefics3-8b", "gemma-3-4b",
                                   "smolvlm", "llava-1.5-7b", "llava-1.5-13b", "bakllava",
                                   "llava-gemma-2b"], not_audited=["llava-gemma-2b"])
