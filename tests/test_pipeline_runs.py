"""End to end through ./run_all.sh's runner: the miniature default (small sizes) and the paper's
code path on local stand-ins (params/paper-smoke.yaml), for every notebook that exists."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ifl import runner
from conftest import SMALL, run
from ifl.data.schema import read_tasks
from ifl.params import load_params

def test_paper_smoke_differs_from_paper_only_in_stand_ins():
    """The smoke runs the one-GPU route (QLoRA, NF4) on stand-ins: it mirrors paper-1gpu.yaml."""
    paper = yaml.safe_load(Path("params/paper-1gpu.yaml").read_text())
    smoke = yaml.safe_load(Path("params/paper-smoke.yaml").read_text())
    allowed = {("common", "run_name"), ("common", "device"), ("common", "make_smoke_assets"),
               ("04_score_languages", "simulate_annotations"),
               ("04_score_languages", "identifier"),  # no GlotLID among the stand-ins
               ("03_collect_responses", "max_new_tokens"), ("07_steering", "max_new_tokens"),
               ("03_collect_responses", "precision_check"),  # covered by test_precision_check.py
               ("03_collect_responses", "precision_check_identifier"),  # as 04's identifier
               ("07_steering", "steer_languages"), ("07_steering", "sweep_depths"),
               ("08_beyond_llava", "max_new_tokens"), ("08_beyond_llava", "n_per_language"),
               ("08_beyond_llava", "identifier"),
               # sizes only: fewer fold draws, images and questions run the same code path
               ("05_dsl_regressions", "sample_split"), ("06_umap_cka", "umap_images"),
               ("06_umap_cka", "umap_questions"), ("06_umap_cka", "cka_images")}
    for section, block in paper.items():
        assert set(block) == set(smoke[section]), section
        for key, value in block.items():
            stand_in = smoke[section][key]
            if stand_in != value:
                leaves = stand_in.values() if isinstance(stand_in, dict) else [stand_in]
                local = all(str(v).startswith("./smoke_assets/") for v in leaves)
                assert (section, key) in allowed or local, key


def test_paper_smoke_translate_data(smoke_run):
    tasks = read_tasks(smoke_run / "01_translate_data" / "tasks.parquet")
    assert set(tasks["benchmark"]) == {"maxm", "llavaw", "visit"}
    assert set(tasks["lang"]) == set(load_params("params/paper.yaml").common.languages)
    visit = tasks[tasks["benchmark"] == "visit"]
    # every translated VisIT row keeps its English item's parallel id and gets its own language
    english = set(visit.loc[visit["lang"] == "en", "parallel_id"])
    assert set(visit["parallel_id"]) == english and visit["lang"].nunique() == 10
    manifest = json.loads((smoke_run / "01_translate_data/training/manifest.json").read_text())
    for lang in ("en", "zh", "de"):
        records = json.loads(Path(manifest[lang]["instruct"]).read_text())
        assert records and all("<image>" in r["conversations"][0]["value"] for r in records if "image" in r)
    assert (smoke_run / "01_translate_data/stage.json").exists()


def test_paper_smoke_train_variants(smoke_run):
    from ifl.models import load_llava

    trained = pd.read_csv(smoke_run / "02_train_variants/variants.csv")
    assert len(trained) == 14 and set(trained["data_lang"]) == {"en", "zh", "de"}
    assert trained["stage1_final_loss"].notna().all() and trained["stage2_final_loss"].notna().all()
    # a QLoRA-trained variant exports a merged model that loads through the model layer
    model, processor = load_llava(trained["model_dir"].iloc[0], dtype="float32", device="cpu")
    assert type(model).__name__ == "LlavaForConditionalGeneration"


def test_default_run_small(default_small_run):
    tmp_path = default_small_run.output_root
    stage = tmp_path / "runs/default/01_translate_data"
    tasks = read_tasks(stage / "tasks.parquet")
    assert len(tasks) == 12 * 2 * 6  # scenes x benchmarks x languages
    assert (tasks.groupby("parallel_id")["lang"].nunique() == 6).all()
    manifest = json.loads((stage / "training/manifest.json").read_text())
    assert {k for k in manifest if k != "image_folder"} == {"en", "zh", "de"}
    effect = pd.read_csv(stage / "error_rate_effect.csv")
    assert effect.loc[effect["error_rate"] == 0, "corrupted_share"].item() == 0
    assert effect["corrupted_share"].is_monotonic_increasing
    for name in ("01_tasks_per_language", "01_translation_error_rate"):
        assert (tmp_path / f"paper_figures/default/{name}.png").exists()
        assert (tmp_path / f"paper_figures/default/{name}.pdf").exists()
    variants = pd.read_csv(tmp_path / "runs/default/02_train_variants/variants.csv")
    assert len(variants) == 14
    sanity = pd.read_csv(tmp_path / "runs/default/02_train_variants/sanity.csv")
    assert len(sanity) == 14 and (sanity["n"] == 3).all()  # 3 held-out questions in each training language
    typed = sanity[[f"accuracy_{t}" for t in
                    ("color", "shape", "count", "exist", "position", "one_object", "several_objects")]]
    # with 3 questions a type may be absent (NaN); every row has some, all within [0, 1]
    assert typed.notna().any(axis=1).all() and (typed.isna() | typed.apply(lambda c: c.between(0, 1))).all().all()
    assert (tmp_path / "paper_figures/default/02_training_curves.png").exists()
    # the default turns the component probes on: what each backbone does text-only beside its
    # real counterpart, across languages, by layer, and what stage 2 leaves of it per variant
    metrics = pd.read_csv(tmp_path / "runs/default/02_train_variants/component_metrics.csv")
    assert {"lm_text", "lm_crosslingual", "lm_probe", "stage2_retention"} <= set(metrics["kind"])
    assert "target_in_lang" in set(metrics.loc[metrics["kind"] == "lm_text", "metric"])
    assert set(metrics.loc[metrics["kind"] == "stage2_retention", "component"]) == set(variants["variant"])
    index = (tmp_path / "rendered/default/index.html").read_text()
    assert "144 tasks in 6 languages" in index  # the headline of notebook 01
    assert (tmp_path / "rendered/default/01_translate_data.html").stat().st_size > 10_000
    # rerun one section alone from its saved state: same tasks, nothing lost
    assert run("params/default.yaml", tmp_path, *SMALL, "--only", "01") == 0
    again = read_tasks(stage / "tasks.parquet")
    pd.testing.assert_frame_equal(tasks, again)
