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
# **Our choices where the paper is silent** (params; shared/reference/STEERING_CKA_UMAP.md §1):
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
# Defaults = params/default.yaml; the runner injects the params file's values below this cell.
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
sweep_depths = [0.0, 0.34, 0.67]
sweep_scales = [1.0, 2.0, 4.0, 8.0]
sweep_model = None
sweep_tasks_per_cell = 10
threads = 2

# %%
import gc

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from ifl import prepare_steering as ps
from ifl.compat import decoder_layers
from ifl.data.schema import read_tasks
from ifl.params import from_notebook
from ifl.prepare_variants import torch_threads
from ifl.stage import open_stage, write_json_atomic
from ifl.steer import default_layer, steering_prompts

common, p = from_notebook(globals(), "07_steering")
stage = open_stage("07_steering", output_root=common.output_root, run_name=common.run_name)
tasks = read_tasks(stage.require("01_translate_data", "tasks.parquet") / "tasks.parquet")
models_table = pd.read_csv(stage.require("03_collect_responses", "models.csv") / "models.csv")
scored = pd.read_parquet(stage.require("04_score_languages", "scored.parquet") / "scored.parquet")
device = ("cuda" if torch.cuda.is_available() else "cpu") if common.device == "auto" else common.device
cpu_threads = torch_threads(p.threads if device == "cpu" else None)
responses_dir = stage.run_dir / "responses"  # beside notebook 03's, one folder per steered run
langs = ps.languages(p, common.languages)
prompts = steering_prompts(langs, source=p.prompt_source, version=p.prompt_version)
steered_models = ps.steer_models(models_table, p)
ps.check_generation_matches_03(stage.run_dir, p)
identifier = ps.identifier_as_in_04(stage.run_dir)
fidelity_columns = ["fidelity_lid"] + (["fidelity_exact"] if common.world == "miniature" else [])
if common.world == "miniature":
    scored["fidelity_exact"] = ps.exact_fidelity(scored)
print(f"identifier: {identifier.name}")


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
runs, diagnostics, conventions = [], [], {}
with cpu_threads:
    for row in steered_models.itertuples():
        model, processor = ps.load(row, p, device)
        n_layers = len(decoder_layers(model))
        layer_l = default_layer(model) if p.layer is None else p.layer
        vecs, diag = ps.vectors(model, processor, prompts, layer_l, p, row.template)
        diagnostics.append(diag.assign(model=row.model))
        conventions[row.model] = {k: v for k, v in next(iter(vecs.values())).settings.items()
                                  if k not in ("x_lang",)}
        torch.save({lang: v.vector for lang, v in vecs.items()}, stage.path("vectors", f"{row.model}.pt"))
        todo = ps.steer_tasks(scored, tasks, row.model, langs, p.benchmarks, p.max_tasks_per_cell,
                              common.seed)
        runs.append(ps.collect_steered(model, processor, row, todo, vecs, p, responses_dir))
        del model, processor
        free_memory()
steered = ps.score(pd.concat(runs, ignore_index=True), tasks, identifier, common.world)
steered.to_parquet(stage.path("steered_scored.parquet"), index=False)
diagnostics = pd.concat(diagnostics, ignore_index=True)
diagnostics.to_csv(stage.path("vector_diagnostics.csv"), index=False)
write_json_atomic(stage.path("convention.json"), conventions)
display(diagnostics[["model", "lang", "layer", "norm", "norm_over_median_token", "top2_share",
                     "max_token_norm_over_median"]].round(3))
if (diagnostics["top2_share"] > 0.5).any():
    print("some vectors put > 50% of their squared norm in two coordinates (massive activations): "
          "consider massive_factor: 10 (reference §1.4)")

# %% [markdown]
# ## Table 5: IFL and IFL + remedy per model
# Cells are restricted to the items that were steered; the model average is the unweighted mean
# over its benchmark x language cells, as in the paper.

# %%
tables = {col: ps.ifl_table(scored, steered, col) for col in fidelity_columns}
for col, table in tables.items():
    table.to_csv(stage.path(f"ifl_remedy_{col}.csv"), index=False)
main = tables["fidelity_lid"]
paper5, paper69 = ps.paper_tables()
summary = main[main["benchmark"] == "average"].drop(columns=["benchmark", "lang"])
if common.world == "paper":
    summary = summary.merge(paper5.drop(columns="relative_increase_pct"), on="model", how="left",
                            suffixes=("", "_paper"))
display(summary.round(3))
if common.world == "miniature":
    exact = tables["fidelity_exact"]
    print("the same with the miniature's exact language rule instead of language ID:")
    display(exact[exact["benchmark"] == "average"].drop(columns=["benchmark", "lang"]).round(3))
    print("the paper's Table 5, for reference (real models):")
    display(paper5)

# %%
fig, ax = plt.subplots(figsize=(1.2 * len(summary) + 3, 3.5))
x = range(len(summary))
ax.bar([i - 0.2 for i in x], summary["ifl"], width=0.4, label="IFL")
ax.bar([i + 0.2 for i in x], summary["ifl_remedy"], width=0.4, label="IFL + remedy")
if "ifl_paper" in summary:
    ax.scatter([i - 0.2 for i in x], summary["ifl_paper"], marker="_", s=300, c="k", label="paper")
    ax.scatter([i + 0.2 for i in x], summary["ifl_remedy_paper"], marker="_", s=300, c="k")
ax.axhline(0, c="0.5", lw=0.8)
ax.set_xticks(list(x), summary["model"], rotation=20, ha="right")
ax.set_ylabel("fidelity: image - text (GlotLID)" if common.world == "paper" else "fidelity: image - text (LID)")
ax.legend(fontsize=8)
stage.save_figure(fig, "07_steering_summary")
plt.show()

# %% [markdown]
# ## Tables 6-9: by benchmark and language
# Beside the paper's cell where the paper has one (the real models only).

# %%
cells = main[main["benchmark"] != "average"]
display(cells.pivot_table(index=["model", "benchmark"], columns="lang", values="diff").round(3))
if common.world == "paper":
    display(ps.beside_paper(main, paper69).round(3))

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
    row = next(ps.steer_models(models_table, p.model_copy(update={"models": [name]})).itertuples())
    parts = []
    with cpu_threads:
        model, processor = ps.load(row, p, device)
        n_layers = len(decoder_layers(model))
        todo = ps.steer_tasks(scored, tasks, name, langs, p.benchmarks, p.sweep_tasks_per_cell, common.seed)
        for layer_l in ps.sweep_layers(p.sweep_depths, n_layers):
            vecs, _ = ps.vectors(model, processor, prompts, layer_l, p, row.template)
            for s in p.sweep_scales:
                p_s = p.model_copy(update={"scale": s})
                got = ps.score(ps.collect_steered(model, processor, row, todo, vecs, p_s, responses_dir,
                                                  progress=False), tasks, identifier, common.world)
                for col in fidelity_columns:
                    t = ps.ifl_table(scored, got, col)
                    parts.append(t[t["benchmark"] == "average"].assign(layer=layer_l, scale=s, fidelity=col))
        default_l = default_layer(model) if p.layer is None else p.layer
        del model, processor
        free_memory()
    sweep = pd.concat(parts, ignore_index=True)
    sweep.to_csv(stage.path("layer_sweep.csv"), index=False)
    display(sweep.pivot_table(index=["fidelity", "layer"], columns="scale", values="ifl_remedy").round(3))
    columns = sorted(sweep["fidelity"].unique())
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.5), squeeze=False, sharey=True)
    for ax, col in zip(axes[0], columns):
        part = sweep[sweep["fidelity"] == col]
        for s, by_scale in part.groupby("scale"):
            ax.plot(by_scale["layer"], by_scale["ifl_remedy"], marker="o", label=f"IFL + remedy, scale {s:g}")
        ax.axhline(part["ifl"].iloc[0], ls="--", lw=0.8, c="k", label="IFL (no steering)")
        ax.axvline(default_l, c="0.6", lw=0.8)
        ax.set_xticks(sorted(sweep["layer"].unique()))
        ax.set_xlabel(f"steered layer of {name} ({n_layers} layers; grey: default)")
        ax.set_title(col, fontsize=9)
    axes[0][0].set_ylabel("fidelity: image - text")
    axes[0][-1].legend(fontsize=7)
    stage.save_figure(fig, "07_layer_sweep")
    plt.show()

# %% [markdown]
# ## Summary

# %%
avg = summary.set_index("model")
headline = ("IFL -> IFL + remedy (LID): " + "; ".join(
    f"{m} {r.ifl:+.3f} -> {r.ifl_remedy:+.3f}" for m, r in avg.iterrows()))
stage.finish(headline, identifier=identifier.name, languages=langs, conventions=conventions,
             ifl=avg["ifl"].round(4).to_dict(), ifl_remedy=avg["ifl_remedy"].round(4).to_dict(),
             n_steered=len(steered), sweep_layers=sorted(sweep["layer"].unique().tolist()) if len(sweep) else [],
             sweep_scales=p.sweep_scales if len(sweep) else [])
print(headline)
