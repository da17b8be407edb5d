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
# # 03 · Collect responses
#
# *Companion to Hinck et al. (2024), §3.1 and appendix A.*
#
# The paper's measurement rests on a controlled contrast. Every task is asked twice:
#
# - **image**: the question with the image (`<image>` expanded to the vision tokens);
# - **text**: the same question with a text *description* of the image in its place, the
#   condition in which the model is a plain language model.
#
# If a model answers a Hindi question in Hindi when given a Hindi description but in English when
# given the image, the image itself moved the reply into English: *image-induced fidelity loss*
# (IFL). Notebook 04 identifies each response's language; notebook 05 estimates the effect.
#
# Generation is greedy (deterministic) with a fixed token limit. The paper spent ~900 GPU hours
# on ~730k completions, about 4.4 s each, one query at a time. Here completions are batched
# (left padding, batches sorted by prompt length, batch size halved on CUDA out-of-memory), and
# the work is **resumable**: responses are written in atomic parquet parts under
# `runs/<run>/responses/<model>/`, so an interrupted run (Ctrl-C, `kill -9`, a lost machine)
# continues where it stopped and yields exactly the rows of an uninterrupted one. A model whose
# responses are all stored is not loaded again. With `processes: N` (one per GPU) each model's
# missing responses are collected by N ranks started with `accelerate launch`, one shard each,
# and merged (`machines`, `machine_rank`, `main_address`: the ranks of several nodes together);
# `speedups` computes the image prefix once per image (`share_prefix`) or decodes with a
# compiled step. See docs/collect_at_scale.md.
#
# **Choices where the paper is silent** (all params): the token limit (`max_new_tokens`; the
# paper does not give it), the chat template per model (`ifl/models.yaml`: LLaVA-1.5 and BakLLaVA
# with `USER: <image>\n... ASSISTANT:`, LLaVA-Gemma with Gemma's chat turns), the image (or
# description) placed before the question as LLaVA-1.5 was trained, and the description's
# language (notebook 01's `description_lang`: the query's own language by default).
#
# In the **miniature**, the models are the 14 variants of notebook 02 and the tasks the
# `shapes_vqa` (short answers, like MaXM) and `shapes_describe` (long answers, like LLaVA-W and
# VisIT) benchmarks in six languages.

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
models = ["variants"]
model_sources = {}
model_revisions = {}
conditions = ["image", "text"]
benchmarks = None
max_tasks_per_cell = 60
max_new_tokens = 32
batch_size = 64
dtype = "float32"
quantization = "none"
threads = 2
processes = 1
machines = 1
machine_rank = 0
main_address = None
main_port = 29500
speedups = {"share_prefix": False, "static_cache": False, "compile": False}
precision_check = False
precision_check_items = 50
precision_check_models = None
precision_check_batch_size = None
precision_check_identifier = "auto"
precision_check_glotlid_source = "cis-lmu/glotlid"
precision_check_glotlid_revision = None

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from ifl.data.schema import read_tasks
from ifl.runtime import begin
from ifl.stage import write_json_atomic
from ifl.stages import collect_responses as stage03

common, p, stage, device = begin(globals(), "03_collect_responses")
all_tasks = read_tasks(stage.input("tasks"))
variants_csv = stage.optional_input("variants")  # a run of off-the-shelf models only has none
variants = pd.read_csv(variants_csv) if variants_csv is not None else None
responses_dir = stage.response_store  # shared with notebook 07's steered runs

# %% [markdown]
# ## Models and tasks

# %%
models = stage03.models_table(p, common.world, variants)
stage.write_table(models, "models")
display(models.drop(columns=["revision"]))

tasks = stage03.select_tasks(all_tasks, benchmarks=p.benchmarks, max_per_cell=p.max_tasks_per_cell,
                             languages=common.languages, seed=common.seed)
n_total = len(models) * len(tasks) * len(p.conditions)
display(tasks.pivot_table(index="lang", columns="benchmark", values="task_id", aggfunc="count",
                          fill_value=0))
print(f"{len(models)} models x {len(tasks)} tasks x {len(p.conditions)} conditions = "
      f"{n_total:,} completions; up to {p.max_new_tokens} new tokens each, batch {p.batch_size}, "
      f"{p.dtype}" + ("" if p.quantization == "none" else f", {p.quantization}") + f", on {device}")

# %% [markdown]
# ## Generation
# Stored responses are read back; only missing ones are generated (the table says which).

# %%
responses, timing = stage03.collect_all(models, tasks, responses_dir, p, device=device)
stage.write_table(responses, "responses")
stage.write_table(timing, "timing")
write_json_atomic(stage.output("generation"), stage03.generation_settings(p, device))
display(timing)

# %% [markdown]
# ## Precision check (params `precision_check`)
# A seeded sample of tasks collected again in both NF4 and bf16 by the off-the-shelf models of
# `precision_check_models` (those whose bf16 weights fit the GPU), scored by the identifier of
# `precision_check_identifier` (notebook 04's rule):
# IFL (fidelity with the image minus with the text, by the language identifier) for each
# precision and their difference, with 95% cluster-bootstrap intervals over parallel items.
# An interval of the difference far from 0 means 4-bit moved the result.

# %%
if p.precision_check:
    check = stage03.precision_check(models, tasks, stage.dir / "precision_check", p,
                                    seed=common.seed, device=device)
    stage.write_table(check, "precision_check")
    display(check.round(3))

# %% [markdown]
# ## What came back
# Length of the answers by benchmark and condition (new tokens), and how long generation took
# per completion (stored rows keep the time measured when they were made).

# %%
display(stage03.answer_lengths(responses, tasks, p.max_new_tokens).round(3))

per_model = responses.groupby("model")["seconds"].mean().sort_values()
fig, ax = plt.subplots(figsize=(7, 0.25 * len(per_model) + 1))
per_model.plot.barh(ax=ax)
ax.set_xlabel(f"seconds per completion ({device}, batch {p.batch_size})")
stage.save_figure(fig, "03_seconds_per_completion")
plt.show()

# %% [markdown]
# ## One item in every language
# The same parallel item answered by the first model, with the image and with the description.

# %%
with pd.option_context("display.max_colwidth", 80):
    display(stage03.example_answers(responses, tasks, models["model"].iloc[0]))

# %% [markdown]
# ## Summary

# %%
headline = stage03.headline(responses, models, timing)
stage.finish(headline, n_responses=len(responses), n_models=len(models), n_tasks=len(tasks),
             generated_now=int(timing["generated_now"].sum()), device=device,
             responses_dir=str(responses_dir))
print(headline)

