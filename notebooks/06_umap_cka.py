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
# # 06 · UMAP and CKA
#
# *Companion to Hinck et al. (2024), §5.1-5.2 and Figure 2.*
#
# Notebooks 03-05 show *that* an image moves LLaVA's replies into English. §5 asks *where*. Two
# looks inside the model:
#
# - **UMAP (Figure 2, left).** LLaVA's projector turns each image patch into one vector in the
#   LLM's input space, beside the embedding-table rows of text tokens. If the projector put
#   image tokens near one language's tokens (English, say), that would explain IFL at the input.
#   The paper embeds image and text tokens jointly with UMAP and finds the image tokens in a
#   region of their own, near no language.
# - **CKA (Figure 2, centre and right).** Centred kernel alignment (Kornblith et al. 2019)
#   compares two sets of representations of the same examples, invariant to rotation and
#   scale: 1 = the same geometry, 0 = unrelated. The paper feeds the same images to two
#   separately trained variants, LLaVA-Yi trained in Chinese and LLaVA-Leo trained in German,
#   and compares their image-token states layer by layer (linear kernel below the diagonal, RBF
#   above). High CKA means the image is embedded alike whatever the LLM and training language:
#   the language bias is not in the projector's placement but in how the LLM reads it.
#
# **Our choices where the paper is silent** (all params; docs/steering_cka_umap.md):
# - the UMAP is fitted once on image and text tokens together, with cosine distance (the two
#   kinds differ a lot in norm, which Euclidean distance would show as a separation of its own),
#   `n_neighbors=15, min_dist=0.1`, seeded (umap-learn is then single-threaded and exact);
#   image tokens are a seeded sample of positions of distinct images, text tokens every token of
#   the tasks' questions without BOS (an attention sink with huge norm), read on a text-only
#   pass of the question;
# - "site" names where a state is read: 0 = the LLM's input (what UMAP shows), l + 1 = the output
#   of decoder layer l (so site l + 1 = `hidden_states[l + 1]`);
# - CKA examples are image-token positions: the same images, the same seeded positions and the
#   same question in both models; RBF bandwidth sigma = 0.5 x sqrt(median squared distance)
#   (Kornblith's demo); float64. With n examples of width d, the usual (biased) estimator is
#   inflated when n is not much larger than d (two independent random sets with n = 50,
#   d = 4096 give 0.99), so we also show the **debiased** estimator (Song et al. 2012) and a
#   chance level (one model's rows shuffled). The paper does not say which it used.
#
# In the **miniature**, the pair is the `yi-clip-zh` and `leo-clip-de` variants of notebook 02
# (tiny LMs pretrained on English + Chinese and English + German, CLIP-style tower, LLaVA
# training in Chinese / German). Both share one frozen tower, so their image tokens differ only
# by projector and LM.

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
umap_model = "vicuna-clip-en"
model_sources = {}
umap_site = 0
umap_images = 50
umap_image_tokens = 16
umap_questions = 50
umap_text_tokens = None
umap_n_neighbors = 15
umap_min_dist = 0.1
umap_metric = "cosine"
cka_pair = ["yi-clip-zh", "leo-clip-de"]
cka_images = 50
cka_image_tokens = 16
cka_threshold = 0.5
cka_prompt_lang = "en"
dtype = "float32"
quantization = "none"
batch_size = 16
threads = 2

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from ifl import figures
from ifl.data.schema import read_tasks
from ifl.runtime import begin
from ifl.stages import umap_cka as stage06

common, p, stage, device = begin(globals(), "06_umap_cka")
tasks = read_tasks(stage.input("tasks"))
tasks = tasks[tasks["lang"].isin(common.languages)]
variants_csv = stage.optional_input("variants")  # the paper world may name hub models instead
variants = pd.read_csv(variants_csv) if variants_csv is not None else None
where = dict(world=common.world, variants=variants, device=device, seed=common.seed)

# %% [markdown]
# ## Figure 2, left: image tokens among text tokens
# Image tokens of distinct images and the tokens of questions in every language, at the LLM's
# input, in one joint UMAP. Norms are shown too: a large gap between the kinds is the reason for
# the cosine metric.

# %%
points, n_layers_umap = stage06.umap_of(p.umap_model, tasks, p, languages=common.languages, **where)
stage.write_table(points, "umap_points")  # re-plot without rerunning
display(points.groupby(["kind", "lang"]).agg(tokens=("x", "size"), mean_norm=("norm", "mean")).round(2))

fig, ax = plt.subplots(figsize=(6, 5))
site_name = "LLM input" if p.umap_site == 0 else f"output of decoder layer {p.umap_site - 1}"
figures.plot_umap(points, ax, f"{p.umap_model}: image vs text tokens ({site_name}, {p.umap_metric})")
stage.save_figure(fig, "06_umap_image_text_tokens")
plt.show()

# %% [markdown]
# ## Figure 2, centre and right: CKA of two variants' image tokens, layer by layer
# The same images, token positions and question go through both models; every site of one is
# compared with every site of the other.

# %%
results, n_images = stage06.cka_of_pair(tasks, p, **where)
stage.write_table(results, "cka")
n, d = int(results["n"].iloc[0]), int(results["d_a"].iloc[0])
print(f"n = {n} image tokens ({n_images} images x {p.cka_image_tokens} positions), d = {d}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
for ax, debiased in zip(axes, (False, True)):
    im = figures.plot_cka(stage06.cka_square(results, debiased), ax,
                          f"{'debiased' if debiased else 'biased'} CKA, n={n}, d={d}\n"
                          f"linear (lower) / RBF {p.cka_threshold} (upper)", tuple(p.cka_pair))
fig.colorbar(im, ax=axes, shrink=0.8)
stage.save_figure(fig, "06_cka_heatmaps")
plt.show()

# %%
display(stage06.same_site(results).round(3))
display(results[results["control"].notna()][["site_a", "kernel", "debiased", "cka", "control"]].round(3))

# %% [markdown]
# ## Summary

# %%
headline, metrics = stage06.summary(points, results, p, n_layers_umap)
stage.finish(headline, **metrics)
print(headline)

