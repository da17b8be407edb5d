"""Test-wide settings: never touch the network (hub calls otherwise hang for minutes)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Small sizes for the miniature default run in the suite (seconds, not minutes). Each later
# notebook adds its own small overrides here.
SMALL = [f"-p{o}" for o in (
    "01_translate_data.mini_scenes=12", "01_translate_data.mini_caption_records=60",
    "01_translate_data.mini_instruct_records=60",
    "02_train_variants.mini_lm_steps=20", "02_train_variants.mini_lm_layers=2",
    "02_train_variants.mini_tower_steps=10",
    "02_train_variants.mini_clip_steps=10",
    "02_train_variants.mini_stage1_steps=3", "02_train_variants.mini_stage2_steps=3",
    "02_train_variants.mini_eval_scenes=3", "02_train_variants.mini_lm_eval_scenes=2",
    "02_train_variants.mini_tower_probe_scenes=40",
    "03_collect_responses.max_tasks_per_cell=3", "03_collect_responses.max_new_tokens=8",
    "04_score_languages.annotation_n=40",
    "05_dsl_regressions.min_labeled=1", "05_dsl_regressions.sample_split=2",
    "06_umap_cka.umap_images=6", "06_umap_cka.umap_questions=4", "06_umap_cka.cka_images=6",
    "07_steering.max_tasks_per_cell=2", "07_steering.sweep_tasks_per_cell=1",
    "07_steering.max_new_tokens=8",
    "08_beyond_llava.n_per_language=1", "08_beyond_llava.max_new_tokens=4")]






def run(params_file: str, out: Path, *extra: str) -> int:
    """The runner as ./run_all.sh calls it, with outputs under `out`."""
    from ifl import runner
    return runner.main([params_file, "-p", f"common.output_root={out}", *extra])


class RunFolder(type(Path())):
    """runs/<run_name> of a finished run, with .output_root (Path's own .root is the "/")."""
    output_root: Path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """params/paper-smoke.yaml end to end once per session: runs/paper-smoke."""
    out = tmp_path_factory.mktemp("smoke")
    assert run("params/paper-smoke.yaml", out) == 0
    return out / "runs" / "paper-smoke"


@pytest.fixture(scope="session")
def default_small_run(tmp_path_factory):
    """params/default.yaml with SMALL sizes end to end once per session: runs/default."""
    out = tmp_path_factory.mktemp("default")
    assert run("params/default.yaml", out, *SMALL) == 0
    folder = RunFolder(out / "runs" / "default")
    folder.output_root = out
    return folder
