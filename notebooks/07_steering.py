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
# # 07 · Steering
#
# *Companion to Hinck et al. (2024), §5.3-5.4 and Tables 5-9.*
#
# If IFL lives in the LLM (notebook 06: the projector places images near no language), then the
# LLM's own representation of "which language am I speaking" should be able to undo it. The
# paper's remedy needs no training and one sentence per language. At decoder layer l,
#
# $$a_\text{lang} = \text{LLM}_l(x_\text{lang}) - \text{LLM}_l(x_\text{en}), \qquad
#   \text{LLM}^*_l = \text{LLM}_l(o_{l-1}) + a_\text{lang},$$
#
# where $x_\text{en}$ = "Describe this image in detail." and $x_\text{lang}$ its translation, and
# $a_\text{lang}$ is added to the layer's output for every generated token, with l at one third of
# the depth (layer 10 of LLaVA-1.5-7B's 32). The paper reports, per model, the IFL before and
# after (Table 5) and per benchmark and language (Tables 6-9):
#
# - IFL = fidelity with the image - fidelity with the text description (notebook 04's scores);
# - IFL + remedy = fidelity with the image, steered - fidelity with the text description;
#
# fidelity being the share of replies that GlotLID says are in the query's language.
#
# **Our choices where the paper is silent** (params; docs/steering_cka_umap.md §1):
# - layer l = a 0-based index into the decoder layers, steered at its output (=
#   `hidden_states[l + 1]`); default `n_layers // 3`; the convention is saved with the vectors;
# - $\text{LLM}_l(x)$ is read at that same site on a text-only pass of the raw sentence (no chat
#   template, no image), averaged over its tokens without BOS (the two sentences differ in
#   length; BOS carries huge activations); `pooling: last` and `prompt_template: true` are the
#   variants. Diagnostics flag a vector dominated by one or two coordinates;
# - "every generated token" = every position >= P - 1 (P = prompt length with image tokens: the
#   last prompt position emits the first new token), by absolute position, so greedy output is
#   the same with and without KV cache and in left-padded batches (tests check both);
# - scale 1; the English queries are not steered ($a_\text{en} = 0$); greedy decoding with the
#   same token limit as notebook 03; steered responses are scored by the same identifier as
#   notebook 04;
# - $x_\text{lang}$: `ifl/data/steering_prompts.csv` (written for this package; the paper's
#   sentences are not published). In the miniature, the world's own "describe the image in
#   detail" sentence in each language, the only phrasing its tiny LMs know.
#
# A **layer sweep** on one model shows how much the choice of l matters.

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
models = ["vicuna-clip-en", "yi-clip-en", "leo-clip-en"]
steer_languages = None
benchmarks = None
max_tasks_per_cell = 20
prompt_source = "miniature"
prompt_version = None
prompt_template = False
layer = None
scale = 1.0
pooling = "mean"
massive_factor = None
positions = "generated"
max_new_tokens = 32
dtype = "float32"
quantization = "none"
batch_size = 64
sweep_depths = [0.0, 0.17, 0.34, 0.5, 0.67, 0.84]
sweep_scales = [1.0, 2.0, 4.0, 8.0]
sweep_model = None
sweep_tasks_per_cell = 10
threads = 2
processes = 1
machines = 1
machine_rank = 0
main_address = None
main_port = 29500
speedups = {"share_prefix": False, "static_cache": False, "compile": False}

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from ifl import figures
from ifl.data.schema import read_tasks
from ifl.findings import read_findings, write_finding
from ifl.runtime import begin
from ifl.score import exact_fidelity
from ifl.stage import write_json_atomic
from ifl.stages import steering as stage07
from ifl.steer import steering_prompts

common, p, stage, device = begin(globals(), "07_steering")
tasks = read_tasks(stage.input("tasks"))
models = pd.read_csv(stage.input("models"))
scored = pd.read_parquet(stage.input("scored"))
stage07.check_generation_matches_03(json.loads(stage.input("generation").read_text()), p)
identifier = stage07.identifier_as_in_04(json.loads(stage.input("identifier").read_text()))
responses_dir = stage.response_store  # beside notebook 03's, one folder per steered run
langs = stage07.languages(p, common.languages)
prompts = steering_prompts(langs, source=p.prompt_source, version=p.prompt_version)
steered_models = stage07.steer_models(models, p)
fidelity_columns = ["fidelity_lid"] + (["fidelity_exact"] if common.world == "miniature" else [])
if common.world == "miniature":
    scored["fidelity_exact"] = exact_fidelity(scored)
print(f"identifier: {identifier.name}")

# %% [markdown]
# ## The steering sentences

# %%
display(pd.DataFrame({"x": prompts}).rename_axis("lang"))

# %% [markdown]
# ## Steered generation
# For each model: one vector per language at layer l, then the image-condition tasks of that
# language, steered. Responses are stored like notebook 03's (resumable), one folder per model,
# language and setting.

# %%
steered, diagnostics, conventions = stage07.steer_all(
    steered_models, scored, tasks, prompts, langs, p, responses_dir=responses_dir,
    vectors_dir=stage.dir / "vectors", device=device, seed=common.seed)
steered = stage07.score(steered, tasks, identifier, common.world)
stage.write_table(steered, "steered_scored")
stage.write_table(diagnostics, "vector_diagnostics")
write_json_atomic(stage.output("convention"), conventions)
display(diagnostics[["model", "lang", "layer", "norm", "norm_over_median_token", "top2_share",
                     "max_token_norm_over_median"]].round(3))
if (diagnostics["top2_share"] > 0.5).any():
    print("some vectors put > 50% of their squared norm in two coordinates (massive activations): "
          "consider massive_factor: 10 (docs/steering_cka_umap.md)")

# %% [markdown]
# ## Table 5: IFL and IFL + remedy per model
# Cells are restricted to the items that were steered; the model average is the unweighted mean
# over its benchmark x language cells, as in the paper.

# %%
tables = {col: stage07.ifl_table(scored, steered, col) for col in fidelity_columns}
stage.write_table(tables["fidelity_lid"], "ifl_remedy")
if "fidelity_exact" in tables:  # the miniature's exact rule
    stage.write_table(tables["fidelity_exact"], "ifl_remedy_exact")
main = tables["fidelity_lid"]
paper5, paper69 = stage07.paper_tables()
summary = stage07.summary(main, paper5 if common.world == "paper" else None)
display(summary.round(3))
if common.world == "miniature":
    print("the same with the miniature's exact language rule instead of language ID:")
    display(stage07.summary(tables["fidelity_exact"], None).round(3))
    print("the paper's Table 5, for reference (real models):")
    display(paper5)

# %%
ylabel = "fidelity: image - text (GlotLID)" if common.world == "paper" else "fidelity: image - text (LID)"
stage.save_figure(figures.steering_summary_plot(summary, ylabel), "07_steering_summary")
plt.show()

# %% [markdown]
# ## Tables 6-9: by benchmark and language
# Beside the paper's cell where the paper has one (the real models only).

# %%
cells = main[main["benchmark"] != "average"]
display(cells.pivot_table(index=["model", "benchmark"], columns="lang", values="diff").round(3))
if common.world == "paper":
    display(stage07.beside_paper(main, paper69).round(3))

# %% [markdown]
# ## Layer sweep
# One model, a few items per cell, the same vectors' recipe at other layers (as fractions of the
# depth) and, beyond the paper, at other scales (`sweep_scales`: the formula has no coefficient,
# so 1 is the paper's remedy; larger ones show how far the direction can push the model). The
# default layer is marked.

# %%
sweep = pd.DataFrame()
if p.sweep_depths:
    name = p.sweep_model or steered_models["model"].iloc[0]
    row = next(stage07.steer_models(models, p.model_copy(update={"models": [name]})).itertuples())
    sweep, n_layers, default_l = stage07.layer_sweep(
        row, scored, tasks, prompts, langs, p, identifier=identifier, world=common.world,
        fidelity_columns=fidelity_columns, responses_dir=responses_dir, device=device, seed=common.seed)
    stage.write_table(sweep, "layer_sweep")
    display(sweep.pivot_table(index=["fidelity", "layer"], columns="scale", values="ifl_remedy").round(3))
    stage.save_figure(figures.layer_sweep_plot(sweep, model=name, n_layers=n_layers, default_layer=default_l),
                      "07_layer_sweep")
    plt.show()

# %% [markdown]
# ## The miniature: is there a language variable where steering writes?
# Notebook 02's linear probe of the reply language at every site of each backbone LM (0 = the
# embeddings, l + 1 = the output of decoder layer l), beside the majority-class baseline; the
# marked site is where the vector is added (the default: one third of the depth). A probe well
# above its baseline there means a linear "which language" variable exists for the vector to
# move; at the baseline, the remedy has nothing to act on, whatever its scale. Paper world: no
# probe, no table.

# %%
if common.world == "miniature":
    metrics_path = stage.optional_input("component_metrics")
    probe = stage07.probe_at_steering_layer(None if metrics_path is None else pd.read_csv(metrics_path), p.layer)
    if len(probe):
        display(probe.round(3))

# %% [markdown]
# ## Findings
# The steering row of the run's findings table (`runs/<run>/findings.csv`; notebook 05 writes the
# others): steered minus unsteered fidelity with the image (language ID), averaged as Table 5 over
# each model's cells and then over the steered models, with a bootstrap interval over parallel
# items, beside the paper's mean improvement over its four models. It agrees when the interval
# lies above 0.

# %%
write_finding(stage.run_dir, **stage07.steering_finding(scored, steered, p, "fidelity_lid", seed=common.seed))
with pd.option_context("display.max_colwidth", None):
    display(read_findings(stage.run_dir))

# %% [markdown]
# ## Summary

# %%
avg = summary.set_index("model")
headline = stage07.headline(summary)
stage.finish(headline, identifier=identifier.name, languages=langs, conventions=conventions,
             ifl=avg["ifl"].round(4).to_dict(), ifl_remedy=avg["ifl_remedy"].round(4).to_dict(),
             n_steered=len(steered), sweep_layers=sorted(sweep["layer"].unique().tolist()) if len(sweep) else [],
             sweep_scales=p.sweep_scales if len(sweep) else [])
print(headline)

