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
# # 08 · Beyond LLaVA
#
# *The paper's measurement (§3) applied to the vision-language models people use today.*
#
# Users of LLaVA-style models keep asking why a German, Chinese or Hindi question about an image
# is answered in English, and how to stop it. The paper answers for four LLaVA models; this
# notebook asks the same question of any Hugging Face VLM, through the very code of
# `python -m ifl.audit MODEL` (`ifl.audit.run_audit`): each task is asked twice, with the image
# and with its description in the image's place, both built with the model's own chat template;
# fidelity is the share of replies in the query's language (the paper's language-ID rule), and
# IFL = fidelity(image) - fidelity(description), negative when the image pulls replies away.
# With `remedy`, the image condition is asked again inside `ifl.remedy.answer_in(model,
# processor, "auto")`: the paper's steering vector (§5.3), added at one third of the depth.
#
# Each model's audit is the CLI's output: `report.html` (one offline page: fidelity per language,
# IFL with 95% CIs, the figure, example replies), `fidelity.csv`, `responses.parquet`, and the
# settings. Without an annotated sample the intervals are a cluster bootstrap over items of the
# language-ID surrogate, labelled as such; with `labels` they are DSL estimates.
#
# In the **miniature**, the audited models are notebook 02's own variants (saved with their chat
# template, like hub checkpoints) on the audit's `shapes` benchmark. In the **paper world**, the
# models are current open VLMs (Qwen2.5-VL, LLaVA-OneVision, Idefics3, Gemma 3, SmolVLM) beside
# the paper's four, on notebook 01's MaXM tasks. A model whose processor the audit cannot use is
# listed with the reason, and the others go on.

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
models = ["vicuna-clip-en", "yi-clip-zh", "leo-clip-de"]
model_sources = {}
benchmark = "shapes"
audit_languages = None
n_per_language = 3
precision = "fp32"
batch_size = 32
max_new_tokens = 16
remedy = True
layer = None
labels = None
identifier = "fallback"
threads = 2

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from ifl.runtime import begin
from ifl.stages import beyond_llava as stage08

common, p, stage, device = begin(globals(), "08_beyond_llava")
variants_csv = stage.optional_input("variants")  # the miniature audits its own variants
variants = pd.read_csv(variants_csv) if variants_csv is not None else None
tasks_path = stage.optional_input("tasks") if p.benchmark != stage08.AUDIT_BENCHMARK else None
models_to_audit = stage08.resolve_models(p, variants)
bench = stage08.benchmark_for_audit(p, tasks_path, stage.dir)
langs = stage08.audit_languages(p, common.languages, bench)
print(f"{len(models_to_audit)} models, benchmark {p.benchmark}, languages {langs}, "
      f"{p.n_per_language} tasks per language")
display(pd.DataFrame(models_to_audit))

# %% [markdown]
# ## The audits
# One `run_audit` per model into `runs/<run>/08_beyond_llava/<model>/`: every input is checked
# before generation, replies are stored batch by batch, so a rerun resumes.

# %%
status = stage08.audit_all(models_to_audit, p, benchmark=bench, languages=langs, folder=stage.dir,
                           device=device, lid=stage08.identifier(p.identifier))
display(status[["model", "audited", "error"]])

# %% [markdown]
# ## IFL per model
# Over all the model's items (each item weighs the same), with a cluster-bootstrap 95% CI by
# item; `ifl_steered` = the steered image replies against the description.

# %%
table = stage08.summary_table(status, stage.dir)
stage.write_table(table, "ifl_by_model")
show = [c for c in ("model", "model_class", "n_items", "fidelity_image", "fidelity_text", "ifl",
                    "ifl_lo", "ifl_hi", "fidelity_image_steered", "ifl_steered", "report") if c in table]
display(table[show].round(3))

fig, ax = plt.subplots(figsize=(1.5 + 0.9 * max(1, int(table["audited"].sum())), 3.6))
stage08.plot_ifl(table, ax)
ax.set_title(f"IFL per model ({p.benchmark}; language-ID surrogate)")
stage.save_figure(fig, "08_ifl_per_model")
plt.show()

# %% [markdown]
# ## Per language
# Each model's `fidelity.csv`; its `report.html` has the figure and example replies.

# %%
for name in table.loc[table["audited"], "model"]:
    per_lang = pd.read_csv(stage.dir / name / "fidelity.csv")
    print(name)
    display(per_lang.drop(columns=["ci_method"]).round(3))

# %% [markdown]
# ## Summary

# %%
headline, metrics = stage08.summary(table, bench, langs)
stage.finish(headline, **metrics)
print(headline)
