# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (ifl)
#     language: python
#     name: ifl
# ---

# %% [markdown]
# # 02 · Train variants
#
# *Companion to Hinck et al. (2024), §4.1, Table 3, appendices A and F.1.*
#
# Is IFL caused by the language model, the vision encoder, or the English training data? The
# paper holds LLaVA-1.5's architecture fixed and swaps one component at a time:
#
# | axis | options |
# |---|---|
# | LLM | Vicuna-v1.5-7b (English), Yi-6b-chat (English + Chinese), Leo-7b-chat (English + German) |
# | vision encoder | CLIP ViT-L/14-336 (trained against English captions), DINOv2 (self-supervised, no language) |
# | training data | English, or LLaVA's data machine-translated into Chinese / German (notebook 01) |
#
# Yi is only combined with English and Chinese data, Leo only with English and German: 14
# variants. Each is a `LlavaForConditionalGeneration` with LLaVA-1.5's 2-layer GELU projector on
# the tower's penultimate-layer patch features, trained in two stages: **stage 1** trains the
# projector alone on captions (LCS-558K; lr 1e-3, batch 256), **stage 2** trains projector and
# LLM on instruction conversations (mix665k; lr 2e-5, batch 128), with the loss on answer tokens
# only. The paper trained on 8×A6000 nodes (~25 h per 7B variant); here `training: qlora` fits
# one 24 GB GPU (4-bit LLM + LoRA), and `full` runs LLaVA's recipe under `accelerate launch`.
#
# **The miniature** runs the same engine on CPU. Its components are trained here from scratch
# and stand in for the real ones:
# - three tiny Llama LMs whose pretraining mixes mirror the backbones: English-dominant with a
#   little of every task language (Vicuna), English + Chinese (Yi), English + German (Leo);
#   they are taught to answer a question about a scene *description*, so the text-only
#   condition of notebook 03 is native to them;
# - a CLIP-style tower trained contrastively against **English** captions, and a DINOv2-style
#   tower trained self-supervised on images alone.
#
# Its results are about these toy models, not the paper's.

# %% tags=["parameters"]
# The values of params/default.yaml (the miniature world); the runner injects the chosen params
# file's values below this cell. A key a params file leaves out takes the schema default
# (ifl/params_schema.py), which is the paper's setting where the two differ: docs/params.md.
run_name = "default"
seed = 0
world = "miniature"
languages = ["en", "de", "zh", "ru", "hi", "ar"]
device = "cpu"
output_root = "."
make_smoke_assets = False
llms = ["vicuna", "yi", "leo"]
visions = ["clip", "dinov2"]
data_languages = ["en", "zh", "de"]
mini_vocab_size = 2048
mini_lm_hidden = 64
mini_lm_layers = 6
mini_lm_steps = 500
mini_lm_batch = 48
mini_tower_hidden = 64
mini_tower_layers = 3
mini_tower_steps = 300
mini_clip_steps = 800
mini_tower_twins = 0.25
mini_lm_eval_scenes = 60
mini_tower_probe_scenes = 2000
mini_lm_crosslingual_share = 0.2
mini_lm_reply_calibration = "multiq"
mini_clip_text = "lm"
mini_component_probes = True
mini_stage1_steps = 100
mini_stage2_steps = 250
mini_stage1_lr = 0.001
mini_stage2_lr = 0.0002
mini_micro_batch = 16
mini_eval_scenes = 80
threads = 2
llm_sources = {"vicuna": "lmsys/vicuna-7b-v1.5", "yi": "01-ai/Yi-6B-Chat", "leo": "LeoLM/leo-hessianai-7b-chat"}
vision_sources = {"clip": "openai/clip-vit-large-patch14-336", "dinov2": "facebook/dinov2-large"}
pretrain_image_folder = "./data/LLaVA-Pretrain/images"
instruct_image_folder = "./data/playground/data"
training = "qlora"
dtype = "bfloat16"
stage1_lr = None
stage1_global_batch = 256
stage1_micro_batch = 16
stage1_max_steps = None
stage2_lr = None
stage2_projector_lr = None
stage2_global_batch = 128
stage2_micro_batch = 4
stage2_max_steps = None
max_length = 2048
save_every = 200
lora_r = 128
lora_alpha = 256
gradient_checkpointing = True
skip_missing_images = False
processes = 1

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from ifl.data.schema import read_tasks
from ifl.runtime import begin
from ifl.stages import train_variants as stage02

common, p, stage, device = begin(globals(), "02_train_variants")
manifest = json.loads(stage.input("training_manifest").read_text())
tasks = read_tasks(stage.input("tasks"))

# %% [markdown]
# ## The components
# In the paper world they are hub checkpoints (params `llm_sources`, `vision_sources`). In the
# miniature they are trained now (and cached: a rerun reads them back). The table shows what
# each stand-in can do before any LLaVA training: each LM's text-only accuracy and the share of
# its answers in the question's language, per language, on held-out questions; each tower's
# probe accuracy (can a linear read-out recover colour and shape from its features?).

# %%
if common.world == "miniature":
    components = stage02.miniature_components(p, stage.dir / "components", common.seed)
    llm_paths = vision_paths = components["paths"]
    metrics = components["metrics"]  # grows below with each variant's stage-2 retention
    stage.write_table(metrics, "component_metrics")
    lm_table, tower_table = stage02.component_tables(metrics)
    display(lm_table.round(2))
    display(tower_table.round(3))
else:
    llm_paths, vision_paths = p.llm_sources, p.vision_sources
    # LCS-558K and LLaVA's playground/data are separate image folders
    manifest["image_folders"] = {"pretrain": p.pretrain_image_folder, "instruct": p.instruct_image_folder}
    display(pd.DataFrame({"source": {**llm_paths, **vision_paths}}))

# %% [markdown]
# With `mini_component_probes`: each backbone's text-only reply language beside its calibration
# target (real chat LLMs' reply languages, MultiQ, Holtermann et al. 2024; see
# ifl/data/miniature/calibration.py for which real model stands for which backbone), the
# cross-lingual probe (facts in one language, question in another: correct, and answered in the
# question's language?), and a linear probe of the reply language at every layer.

# %%
if common.world == "miniature" and p.mini_component_probes:
    from ifl.mini.metrics import crosslingual_summary
    text = metrics[metrics["kind"] == "lm_text"].pivot_table(index=["component", "lang"], columns="metric",
                                                             values="value")
    display(text[["fidelity", "target_in_lang", "in_english", "target_in_english", "accuracy"]].round(2))
    display(crosslingual_summary(metrics[metrics["kind"] == "lm_crosslingual"]).round(2))
    display(metrics[metrics["kind"] == "lm_probe"].pivot_table(index="component", columns=["metric", "site"],
                                                               values="value").round(2))

# %% [markdown]
# ## The design space (Table 3)

# %%
space = stage02.design_space_table(p)
display(space.pivot_table(index="llm", columns=["vision", "data_lang"], values="name", aggfunc="count",
                          fill_value=0))
print(f"{len(space)} variants")

# %% [markdown]
# ## Training
# Each variant runs stage 1 then stage 2; finished variants are read back, an interrupted one
# resumes from its last checkpoint. With `processes: N` (paper world, one rank per GPU) each
# variant is trained by N ranks started with `accelerate launch ... -m ifl.train` (the command
# a person would type: ifl/train/__main__.py), under DeepSpeed ZeRO-2 for the full fine-tune,
# and read back here; its log is `<variant>/launch.log`.

# %%
trained = stage02.train_all(p, common.world, llm_paths, vision_paths, manifest,
                            stage.dir / "variants", device=device, seed=common.seed)
stage.write_table(trained, "variants")
display(trained.drop(columns="model_dir").round(3))

# %%
curves = stage02.loss_curves(stage.dir / "variants", trained["variant"].tolist())
stage.save_figure(stage02.plot_loss_curves(curves), "02_training_curves")
plt.show()

# %% [markdown]
# ## Sanity check: does each variant answer in its training language?
# Held-out short questions (the `shapes_vqa` tasks of notebook 01, with the image) in the
# variant's training language. Accuracy uses the miniature's exact rule (the answer's concept is
# in the response); chance is the level of a blind guess over each question type's options.
# Every variant is loaded through the model layer, exactly as notebook 03 will load it.
#
# Accuracy is split two ways; read both before the IFL results.
# - By scene: with **one object** in the image, reading the image is all a question needs; with
#   **several**, the LM must also find the object the question names ("what colour is the
#   *square*?"), a content-addressed lookup (an induction-style circuit). The tiny LMs do not form
#   that circuit within their CPU budget: text-only, they answer one-object scenes and counts
#   almost perfectly and otherwise pick one of the objects present. (Measured while building the
#   miniature: a colour-only retrieval corpus stayed at the level of that guess after 1,000-6,000
#   steps over widths 64-128, learning rates 1e-3-3e-3 and two initialisations.)
# - By question type (second table): counts and colours are read from the image, shape is the
#   vision towers' weakest feature, and exist / position need the lookup above.
#
# The *language* of the answer, which is all that IFL measures, is learned far more easily (the
# last column of the first table).

# %%
sanity = None
if common.world == "miniature":
    sanity = stage02.sanity_check(trained, tasks, stage.dir / "sanity",
                                  n_scenes=p.mini_eval_scenes, device=device)
    stage.write_table(sanity, "sanity")
    display(sanity[["variant", "data_lang", "n", "accuracy", "chance", "accuracy_one_object",
                    "accuracy_several_objects", "answer_in_training_language"]].round(3))
    display(stage02.accuracy_by_type(sanity).round(3))

# %% [markdown]
# ## Stage-2 retention: does the LM keep its text-only language behaviour?
# (with `mini_component_probes`) Each variant's LM answers the text-only questions again, without
# an image; beside it, its backbone's answers before LLaVA training.

# %%
if common.world == "miniature" and p.mini_component_probes:
    from ifl.mini.metrics import stage2_retention
    kept = stage2_retention(metrics, trained, common.languages, n_scenes=p.mini_lm_eval_scenes // 2,
                            seed=common.seed)
    metrics = pd.concat([metrics, kept], ignore_index=True)
    stage.write_table(metrics, "component_metrics")
    display(kept[kept["metric"].str.startswith("fidelity")].pivot_table(
        index="component", columns=["metric", "lang"], values="value").round(2))

# %% [markdown]
# ## Summary

# %%
headline = stage02.headline(trained, sanity)
stage.finish(headline, variants=trained["variant"].tolist(),
             model_dirs=dict(zip(trained["variant"], trained["model_dir"])))
print(headline)

