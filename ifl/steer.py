"""The paper's training-free remedy (§5.3): add a language direction to one decoder layer's
output while generating.

    a_lang = LLM_l(x_lang) - LLM_l(x_en),   LLM*_l = LLM_l(o_{l-1}) + a_lang

x_en = "Describe this image in detail.", x_lang its translation (ifl/data/steering_prompts.csv;
in the miniature the world's own "describe in detail" sentence, the only one its LMs know).

    layer = default_layer(model)                          # n_layers // 3: 10 of 32 for 7B
    vec = steering_vector(model, tok, prompts["de"], prompts["en"], layer)
    with steering(model, vec.vector, layer, prompt_length=P):
        model.generate(...)
    collect_responses(..., steering=LanguageSteering.of(vec, "de"))   # notebook 07

Choices where the paper is silent (docs/steering_cka_umap.md §0, §1.4):
- layer l is a 0-based index into the decoder ModuleList; its site is the block's output, i.e.
  hidden_states[l + 1] (`ifl.hooks.convention`, saved with every result);
- LLM_l(x) is read with a hook at that same site, on a text-only forward of the raw sentence
  (tokenizer's BOS, no chat template, no image); `template=` wraps it in a chat turn instead;
- pooled by the mean over its tokens without BOS (the two sentences differ in length, and BOS
  carries massive activations whose 1/n weight would differ); `pool="last"` is the variant;
- added at every position whose output is a generated token: absolute position >= P - 1, P the
  prompt length with image tokens (the last prompt position emits token 1); positions="all"
  also steers the prompt;
- scale 1 (the formula has no coefficient).
"""
from __future__ import annotations

import csv
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterator

import numpy as np
import torch

from ifl.compat import decoder_layers
from ifl.hooks import add_to_layer, capture, convention
from ifl.prompts import query
from ifl.prompts import template as get_template

DESCRIBE_EN = "Describe this image in detail."
POOLS, POSITIONS, PROMPT_SOURCES = ("mean", "last"), ("generated", "all"), ("table", "miniature")


def default_layer(model) -> int:
    """One third of the depth, rounded down (the paper: "layer 10 out of 30")."""
    return default_layer_of(len(decoder_layers(model)))


def default_layer_of(n_layers: int) -> int:
    """`default_layer` for a depth given as a number (e.g. read from a probe table).

    >>> default_layer_of(30), default_layer_of(6)
    (10, 2)
    """
    return n_layers // 3


def steering_prompts(langs, source: str = "table", version: int | None = None) -> dict[str, str]:
    """x_lang per language: rows of ifl/data/steering_prompts.csv (its newest `version`, or the
    one given), or the miniature's "describe the image in detail" sentence (lexicon act
    `instr_detail`, first variant)."""
    langs = list(dict.fromkeys(["en", *langs]))  # x_en is always needed
    if source == "miniature":
        from ifl.data.miniature.render import render_act
        from ifl.data.miniature.tasks import check_langs

        check_langs(langs, "steering languages")
        return {lang: render_act({"act": "instr_detail", "v": 0}, lang) for lang in langs}
    if source != "table":
        raise ValueError(f"source must be one of {PROMPT_SOURCES}, got {source!r}")
    text = resources.files("ifl.data").joinpath("steering_prompts.csv").read_text(encoding="utf-8")
    rows = [r for r in csv.DictReader(text.splitlines())
            if version is None or int(r["version"]) == version]
    newest: dict[str, dict] = {}
    for r in rows:
        if r["iso"] not in newest or int(r["version"]) > int(newest[r["iso"]]["version"]):
            newest[r["iso"]] = r
    missing = [lang for lang in langs if lang not in newest]
    if missing:
        raise KeyError(f"no steering prompt for {missing}"
                       f"{'' if version is None else f' at version {version}'}: add a row to "
                       "ifl/data/steering_prompts.csv (iso,version,text,...)")
    return {lang: newest[lang]["text"] for lang in langs}


def read_state(model, tokenizer, text: str, layer: int, *, pool: str = "mean",
               template: str | None = None, massive_factor: float | None = None):
    """LLM_l(text): the output of decoder layer `layer` on a text-only pass, pooled to one
    vector [hidden] (float32, CPU). Returns (vector, per-token norms [n_tokens] without BOS).
    massive_factor: also leave out tokens whose norm exceeds this many times the median (the
    fallback for massive activations on "." / "\\n", Sun et al. 2024)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    prompt = text if template is None else query(get_template(template), text, image=False)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode(), capture(model, [layer + 1]) as got:
        model(input_ids=ids)
    h = got[layer + 1][0][0]  # [seq, hidden]
    if tokenizer.bos_token_id is not None and ids[0, 0] == tokenizer.bos_token_id:
        h = h[1:]
    if len(h) == 0:
        raise ValueError(f"{text!r} has no token besides BOS")
    norms = h.norm(dim=-1)
    if massive_factor is not None:
        keep = norms <= massive_factor * norms.median()
        h = h[keep] if keep.any() else h
    return (h.mean(0) if pool == "mean" else h[-1]), norms.numpy()


@dataclass
class SteeringVector:
    """a_lang and how it was made; `diagnostics` flags a direction dominated by a few
    coordinates (top2_share above ~0.5: see docs/steering_cka_umap.md §1.4 item 4)."""
    vector: torch.Tensor   # [hidden] float32, CPU
    lang: str
    settings: dict
    diagnostics: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.vector.numpy().tobytes()).hexdigest()[:12]


def steering_vector(model, tokenizer, x_lang: str, x_en: str, layer: int, *, lang: str = "",
                    pool: str = "mean", template: str | None = None,
                    massive_factor: float | None = None) -> SteeringVector:
    """a_lang = LLM_l(x_lang) - LLM_l(x_en), with diagnostics: |a|, |a| / median token norm
    at the site, the share of |a|^2 in its two largest coordinates, the largest token norm over
    the median (massive activations)."""
    kw = dict(pool=pool, template=template, massive_factor=massive_factor)
    h_lang, n_lang = read_state(model, tokenizer, x_lang, layer, **kw)
    h_en, n_en = read_state(model, tokenizer, x_en, layer, **kw)
    a = h_lang - h_en
    sq = a.double() ** 2
    median = float(np.median(np.concatenate([n_lang, n_en])))
    diagnostics = {
        "norm": float(a.norm()), "norm_over_median_token": float(a.norm()) / median,
        "top2_share": float(sq.topk(min(2, len(sq))).values.sum() / sq.sum()) if sq.sum() > 0 else 0.0,
        "max_token_norm_over_median": float(max(n_lang.max(), n_en.max()) / median),
        "n_tokens_lang": len(n_lang), "n_tokens_en": len(n_en)}
    settings = {**convention(layer, len(decoder_layers(model))), "pool": pool,
                "template": template, "massive_factor": massive_factor, "x_lang": x_lang, "x_en": x_en}
    return SteeringVector(a, lang, settings, diagnostics)


@contextmanager
def steering(model, vector: torch.Tensor, layer: int, scale: float = 1.0,
             positions: str = "generated",
             prompt_length: int | torch.Tensor | None = None) -> Iterator[None]:
    """Add scale * vector to the output of decoder layer `layer` inside the block.

    positions="generated": at absolute positions >= P - 1, P = prompt_length (tokens incl.
    image tokens, without padding): an int, or a tensor [batch] for a left-padded batch, where
    each row's positions are counted from its first real token (as generate() counts them from
    the attention mask), so row i's generated tokens start at its own P_i - 1. Equivalently, in
    padded columns every row starts at the same column (the batch's width - 1). "all": every
    position, the prompt's included. Hooks are removed on exit, also after an exception."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    min_position = None
    if positions == "generated":
        if prompt_length is None:
            raise ValueError("positions='generated' needs prompt_length (P, or a tensor [batch] "
                             "of P per row: attention_mask.sum(1))")
        min_position = torch.as_tensor(prompt_length) - 1
    with add_to_layer(model, layer, scale * vector.float(), min_position):
        yield


@dataclass(frozen=True)
class LanguageSteering:
    """`collect_responses(steering=...)`'s callable for one language: called with (model,
    inputs) per batch, it steers that batch with each row's own prompt length from the
    attention mask. Its repr (saved in settings.json, compared on resume) names the settings
    and the vector's digest, not the vector."""
    lang: str
    layer: int
    digest: str
    scale: float = 1.0
    positions: str = "generated"
    vector: torch.Tensor = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, vec: SteeringVector, scale: float = 1.0, positions: str = "generated"):
        return cls(vec.lang, vec.settings["layer"], vec.digest, scale, positions, vec.vector)

    def __call__(self, model, inputs):
        lengths = inputs["attention_mask"].sum(dim=1)  # P per row: real tokens, image tokens included
        return steering(model, self.vector, self.layer, self.scale, self.positions,
                        prompt_length=lengths)
