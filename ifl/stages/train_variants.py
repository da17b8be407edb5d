"""Notebook 02: train the design-space variants (Table 3) in either world, and check each one.

Paper: §4.1, Table 3, appendix A and F.1.

Both worlds run the same engine (`ifl.train`): a LLaVA assembled from an LLM and a vision tower,
stage 1 (projector on captions) then stage 2 (projector + LLM on conversations) in the variant's
data language. The worlds differ only in where the components come from (hub ids vs the
miniature's own tiny pretrained models) and in sizes and steps.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from ifl.data.miniature.scenes import COLORS, POSITIONS, SHAPES
from ifl.params_schema import TrainVariants
from ifl.runtime import MINI_TEMPLATE, torch_threads
from ifl.train import LoraSettings, StageSettings, design_space, train_variant
from ifl.train.preflight import check_manifest
from ifl.train.recipes import learning_rates

# How many answers each short question type allows: the chance level of a blind guess.
N_OPTIONS = {"color": len(COLORS), "shape": len(SHAPES), "count": 3, "exist": 2,
             "position": len(POSITIONS)}


def design_space_table(p: TrainVariants) -> pd.DataFrame:
    """The variants as a table (name, llm, vision, data_lang)."""
    return pd.DataFrame([vars(s) for s in specs(p)])


def specs(p: TrainVariants):
    """The variants to train: the paper's combination rules over the chosen axes."""
    return design_space(llms=tuple(p.llms), visions=tuple(p.visions), data_langs=tuple(p.data_languages))


def miniature_components(p: TrainVariants, out: Path, seed: int) -> dict:
    """Tokenizer, the three backbone LMs and the two towers (cached), as {"paths", "metrics"}.
    Paths are keyed like the design space: vicuna / yi / leo, clip / dinov2."""
    from ifl.mini import build_components

    with torch_threads(p.threads):
        built = build_components(
            out, seed=seed, vocab_size=p.mini_vocab_size, lm_hidden=p.mini_lm_hidden,
            lm_layers=p.mini_lm_layers, lm_steps=p.mini_lm_steps, lm_batch=p.mini_lm_batch,
            tower_hidden=p.mini_tower_hidden, tower_layers=p.mini_tower_layers,
            tower_steps=p.mini_tower_steps, clip_steps=p.mini_clip_steps,
            tower_twins=p.mini_tower_twins, lm_eval_scenes=p.mini_lm_eval_scenes,
            tower_probe_scenes=p.mini_tower_probe_scenes,
            lm_crosslingual_share=p.mini_lm_crosslingual_share,
            lm_reply_calibration=p.mini_lm_reply_calibration, clip_text=p.mini_clip_text)
        metrics = pd.DataFrame(built["metrics"])
        if p.mini_component_probes:
            from ifl.data.miniature import available_langs
            from ifl.mini.metrics import component_report
            metrics = pd.concat([metrics, component_report(
                built["paths"], list(p.llms), available_langs(), n_scenes=p.mini_lm_eval_scenes,
                probe_scenes=max(1, p.mini_lm_eval_scenes // 4), seed=seed)], ignore_index=True)
    paths = dict(built["paths"])
    paths["dinov2"] = paths.pop("dino")  # the miniature's DINOv2 stand-in
    return {"paths": paths, "metrics": metrics}


def stage_settings(p: TrainVariants, world: str) -> tuple[StageSettings, StageSettings]:
    """Stage 1 and 2 settings: LLaVA-1.5's recipe (paper) or the miniature's short schedule."""
    if world == "miniature":
        common = dict(global_batch=p.mini_micro_batch, micro_batch=p.mini_micro_batch, max_length=160,
                      save_every=50)
        return (StageSettings(lr=p.mini_stage1_lr, max_steps=p.mini_stage1_steps, format="plain", **common),
                StageSettings(lr=p.mini_stage2_lr, max_steps=p.mini_stage2_steps, **common))
    shared = dict(max_length=p.max_length, save_every=p.save_every,
                  gradient_checkpointing=p.gradient_checkpointing)
    lr = paper_learning_rates(p)
    return (StageSettings.llava_stage1(micro_batch=p.stage1_micro_batch, lr=lr.stage1,
                                       global_batch=p.stage1_global_batch,
                                       max_steps=p.stage1_max_steps, **shared),
            StageSettings.llava_stage2(micro_batch=p.stage2_micro_batch, lr=lr.stage2,
                                       global_batch=p.stage2_global_batch,
                                       max_steps=p.stage2_max_steps, **shared))


def paper_learning_rates(p: TrainVariants):
    """The training mode's recipe rates, with the ones the params set."""
    return learning_rates(p.training, stage1=p.stage1_lr, stage2=p.stage2_lr,
                          projector=p.stage2_projector_lr)


def train_all(p: TrainVariants, world: str, llm_paths: dict, vision_paths: dict, manifest: dict,
              out: Path, *, device: str, seed: int) -> pd.DataFrame:
    """Train (or read back) every variant; one row per variant with its losses and timing.
    With `processes` > 1 each variant is trained by that many ranks (`launch_variant`) and
    then read back here."""
    stage1, stage2 = stage_settings(p, world)
    template = MINI_TEMPLATE if world == "miniature" else None  # None: each LLM's own template
    qlora = (LoraSettings(r=p.lora_r, alpha=p.lora_alpha, projector_lr=paper_learning_rates(p).projector)
             if world == "paper" and p.training == "qlora" else None)
    dtype = torch.float32 if world == "miniature" else getattr(torch, p.dtype)
    rows = []
    check_manifest(manifest, [s.data_lang for s in specs(p)], skip_missing=p.skip_missing_images)
    if p.processes > 1:
        check_processes(p, world, device)
    for spec in tqdm(specs(p), desc="variants", unit="variant"):
        started = time.perf_counter()
        if p.processes > 1:
            launch_variant(spec, p, llm_paths[spec.llm], vision_paths[spec.vision], manifest,
                           out, stage1, stage2, qlora, device=device, seed=seed)
        with torch_threads(p.threads if world == "miniature" else None):
            result = train_variant(spec, llm_paths[spec.llm], vision_paths[spec.vision], manifest,
                                   template, stage1, stage2, out, dtype=dtype, device=device,
                                   qlora=qlora, seed=seed, progress=False,
                                   skip_missing_images=p.skip_missing_images)
        rows.append({"variant": spec.name, "llm": spec.llm, "vision": spec.vision,
                     "data_lang": spec.data_lang, "model_dir": str(result.model_dir),
                     "cached": result.cached, "seconds": round(time.perf_counter() - started, 1),
                     "skipped_records": result.skipped_records,
                     **{f"{stage}_final_loss": _final_loss(getattr(result, stage))
                        for stage in ("stage1", "stage2")}})
    return pd.DataFrame(rows)


def check_processes(p: TrainVariants, world: str, device: str) -> None:
    """`processes` > 1 needs the paper world (the miniature's tiny models train in this process,
    with `threads`) and, on CUDA, one GPU per rank."""
    if world != "paper":
        raise ValueError(f"02_train_variants.processes={p.processes}: several training processes "
                         "are for the paper world; the miniature trains in this process "
                         "(set processes: 1, or threads)")
    if device != "cpu" and torch.cuda.device_count() < p.processes:
        raise ValueError(f"02_train_variants.processes={p.processes}, but "
                         f"{torch.cuda.device_count()} GPUs are visible: one rank per GPU (lower "
                         "it, or set common.device: cpu)")


def launch_variant(spec, p: TrainVariants, llm: str, vision: str, manifest: dict, out: Path,
                   stage1: StageSettings, stage2: StageSettings, qlora: LoraSettings | None, *,
                   device: str, seed: int) -> None:
    """Train one variant with `processes` ranks through `accelerate launch ... -m ifl.train`
    (DeepSpeed ZeRO-2 for the full fine-tune on CUDA), unless it is trained with this recipe
    already. The ranks read notebook 01's manifest (written beside the variants) and its image
    folders as options, as a person training by hand would; the log is <variant>/launch.log.
    A failed launch raises TrainLaunchError naming it; a rerun resumes from the checkpoints."""
    from ifl.train.launch import TrainLaunchError, launch_training, train_arguments
    from ifl.train.variants import is_trained

    if is_trained(spec, out, llm, vision, stage1, stage2, qlora):
        return
    folders = manifest.get("image_folders") or {}
    manifest_path = Path(out) / "launch_manifest.json"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "image_folders"},
                                        indent=1), encoding="utf-8")
    cpu = device == "cpu"
    cli = train_arguments(spec, llm, vision, manifest_path, out, stage1, stage2, qlora=qlora,
                          dtype=p.dtype, seed=seed, image_folders=folders,
                          skip_missing_images=p.skip_missing_images,
                          threads=p.threads if cpu else None)
    log = Path(out) / spec.name / "launch.log"
    launch_training(cli, processes=p.processes, deepspeed=p.training == "full" and not cpu,
                    cpu=cpu, log=log, threads=p.threads if cpu else None)
    if not is_trained(spec, out, llm, vision, stage1, stage2, qlora):
        raise TrainLaunchError(f"02_train_variants: the ranks ended without {spec.name} trained "
                               f"with this recipe (its DONE differs or is missing); log: {log}")


def loss_curves(out: Path, variants: list[str]) -> pd.DataFrame:
    """Long table (variant, stage, step, loss) from the losses each stage saved."""
    frames = []
    for name in variants:
        for stage in ("stage1", "stage2"):
            path = out / name / stage / "losses.csv"
            if path.exists():
                frames.append(pd.read_csv(path).assign(variant=name, stage=stage))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def sanity_check(trained: pd.DataFrame, tasks: pd.DataFrame, out: Path, *, n_scenes: int,
                 device: str) -> pd.DataFrame:
    """Each variant answers held-out short questions (image condition) in its training language:
    accuracy (the exact miniature rule), chance level, and the share answered in that language.
    Loads every variant through the model layer (`ifl.models.load_llava`), as notebook 03 will."""
    from ifl.collect import collect_responses
    from ifl.data.miniature import concepts, gold_language
    from ifl.models import load_llava

    vqa = tasks[tasks["benchmark"] == "shapes_vqa"]
    keep = sorted(vqa["parallel_id"].unique())[:n_scenes]
    rows = []
    for row in trained.itertuples():
        subset = vqa[vqa["parallel_id"].isin(keep) & (vqa["lang"] == row.data_lang)]
        model, processor = load_llava(row.model_dir, dtype="float32", device=device)
        answers = collect_responses(model, processor, subset, model_name=row.variant,
                                    template=MINI_TEMPLATE, conditions=("image",), max_new_tokens=8,
                                    batch_size=32, out_dir=out, progress=False)
        joined = answers.merge(subset[["task_id", "answer_key", "question_type", "scene"]], on="task_id")
        joined["correct"] = [key in concepts(text)
                             for key, text in zip(joined["answer_key"], joined["response"])]
        by_type = joined.groupby("question_type")["correct"].mean()
        single = joined["scene"].map(lambda scene: len(json.loads(scene)["objects"]) == 1)
        rows.append({"variant": row.variant, "data_lang": row.data_lang, "n": len(joined),
                     "accuracy": joined["correct"].mean() if len(joined) else 0.0,
                     "chance": (1 / joined["question_type"].map(N_OPTIONS)).mean(),
                     "answer_in_training_language": (joined["response"].map(gold_language)
                                                     == row.data_lang).mean(),
                     # one object: reading the image suffices; several: the LM must also find
                     # the object the question names (the tiny LMs' weak spot, see notebook 02)
                     "accuracy_one_object": joined.loc[single, "correct"].mean(),
                     "accuracy_several_objects": joined.loc[~single, "correct"].mean(),
                     **{f"accuracy_{qtype}": by_type.get(qtype) for qtype in N_OPTIONS}})
    return pd.DataFrame(rows)


def accuracy_by_type(sanity: pd.DataFrame) -> pd.DataFrame:
    """Mean over variants of the accuracy per question type, beside that type's chance level:
    which facts about the image the variants can read and which they guess."""
    return pd.DataFrame([{"question_type": qtype, "accuracy": sanity[f"accuracy_{qtype}"].mean(),
                          "min_over_variants": sanity[f"accuracy_{qtype}"].min(),
                          "chance": 1 / n} for qtype, n in N_OPTIONS.items()])


def _final_loss(result) -> float | None:
    losses = getattr(result, "losses", None)
    if losses is None or len(losses) == 0:
        return None
    return float(losses["loss"].tail(10).mean())


def component_tables(metrics: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Miniature components: (LM metrics per language, tower metrics), for display."""
    lm = metrics[metrics["kind"] == "lm"].pivot_table(index=["component", "metric"], columns="lang",
                                                      values="value", aggfunc="first")
    towers = metrics[metrics["kind"] == "tower"].pivot_table(index="component", columns="metric",
                                                             values="value", aggfunc="first")
    return lm, towers


def plot_loss_curves(curves: pd.DataFrame):
    """Both stages' answer-token loss per variant (rolling mean over 5 steps)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=False)
    for ax, (stage_name, title) in zip(axes, [("stage1", "stage 1: projector on captions"),
                                             ("stage2", "stage 2: projector + LLM on conversations")]):
        part = curves[curves["stage"] == stage_name] if len(curves) else curves
        for name, rows in part.groupby("variant"):
            ax.plot(rows["step"], rows["loss"].rolling(5, min_periods=1).mean(), label=name, lw=1)
        ax.set_title(title); ax.set_xlabel("optimizer step"); ax.set_ylabel("answer-token loss")
    axes[1].legend(fontsize=6, ncol=2)
    return fig


def headline(trained: pd.DataFrame, sanity: pd.DataFrame | None) -> str:
    """One line: how many variants, how long, and (miniature) how well they answer."""
    if sanity is not None:
        check = (f"accuracy in the training language {sanity['accuracy'].min():.0%}-"
                 f"{sanity['accuracy'].max():.0%} (chance {sanity['chance'].mean():.0%}; "
                 f"one-object scenes {sanity['accuracy_one_object'].min():.0%}-"
                 f"{sanity['accuracy_one_object'].max():.0%})")
    else:
        check = "real-world accuracy is scored in notebook 04"
    return f"{len(trained)} variants trained ({trained['seconds'].sum() / 60:.1f} min this run); {check}"
