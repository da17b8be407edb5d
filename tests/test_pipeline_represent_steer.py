"""Notebooks 06 (UMAP / CKA) and 07 (steering) end to end in both worlds (the session's runs)."""
import json

import pandas as pd

from ifl.findings import read_findings
from ifl.stages import steering as stage07


def check_umap_cka(stage):
    points = pd.read_parquet(stage / "umap_points.parquet")
    assert {"image", "text"} <= set(points["kind"]) and points[["x", "y"]].notna().all().all()
    cka = pd.read_csv(stage / "cka.csv")
    assert {"linear", "rbf"} <= set(cka["kernel"]) and set(cka["debiased"]) == {False, True}
    biased = cka[(cka["kernel"] == "linear") & ~cka["debiased"] & cka["control"].isna()]
    assert biased["cka"].between(-1e-9, 1 + 1e-9).all()


def check_steering(stage, models):
    table = pd.read_csv(stage / "ifl_remedy_fidelity_lid.csv")
    assert set(table["model"]) == set(models)
    assert ((table["ifl"] - (table["image"] - table["text"])).abs() < 1e-9).all()
    assert ((table["ifl_remedy"] - (table["steered"] - table["text"])).abs() < 1e-9).all()
    convention = json.loads((stage / "convention.json").read_text())
    for model in models:  # the layer convention is written with every result
        c = convention[model]
        assert c["hidden_states_index"] == c["layer"] + 1 and c["site"] == "block_output"
    sweep = pd.read_csv(stage / "layer_sweep.csv")
    assert sweep["layer"].nunique() >= 2 and sweep["scale"].notna().all()
    findings = read_findings(stage.parent).set_index("finding")  # 07 writes the steering row
    row = findings.loc[stage07.STEERING]
    assert pd.notna(row["run"]) and row["ci_low"] <= row["ci_high"]
    assert row["agrees"] in (True, False) and float(row["paper"]) > 0
    assert len(findings) == 8  # with notebook 05's seven rows


def test_paper_smoke_umap_cka_and_steering(smoke_run):
    check_umap_cka(smoke_run / "06_umap_cka")
    check_steering(smoke_run / "07_steering", ["llava-1.5-7b", "llava-1.5-13b", "bakllava", "llava-gemma-2b"])


def test_default_small_umap_cka_and_steering(default_small_run):
    check_umap_cka(default_small_run / "06_umap_cka")
    check_steering(default_small_run / "07_steering", ["vicuna-clip-en", "yi-clip-en", "leo-clip-en"])
    for name in ("06_umap", "07_"):
        assert any(p.name.startswith(name) for p in
                   (default_small_run.output_root / "paper_figures/default").glob("*.png")), name
