"""Prefix sharing: the image part of a prompt is computed once per image, not once per language.

In LLaVA's templates the image comes first ("USER: <image>\\n{question} ASSISTANT:"), so the
parallel tasks of one item (the same image asked in up to 14 languages) share every token up to
and including the image's 576 tokens. `plan` finds that shared prefix in a processed batch;
`prefill` runs it once per distinct image (a batch of k images, no padding) and selects each
row's copy of the KV cache; `generate` then only processes the per-row suffixes.

Layout. The plain path left-pads: [pads][prefix][suffix]. A shared cache must sit at the same
columns for every row, so the padding moves between prefix and suffix:

    row with a short question:  [prefix P][pad pad][suffix ........]
    row with a long question:   [prefix P][suffix ..............]

The attention mask is 0 on the pads, and generate counts position ids from the mask
(cumsum - 1), so every real token keeps the position it has in the plain path, and the last
prompt token of every row sits in the last column. Greedy outputs equal the plain path's
(tests/test_collect_fast.py, on the three hub classes' stand-ins, float32).

When the rows do not share a prefix that contains their image tokens (a template that puts the
image after the question, a row without an image), `plan` returns the reason instead, and the
caller uses the plain path and logs that reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ifl.compat import forward_cache, select_cache_rows, static_cache_from


@dataclass
class SharedPrefix:
    """A batch re-laid for one shared prefix per image.

    prefix_ids [k, P] (k distinct images; the rows are identical token ids, the images differ),
    pixel_values [k, 3, H, W], rows [B] (row -> index into k), inputs: input_ids and
    attention_mask [B, P + S] with S the longest suffix (pads between prefix and suffix)."""
    prefix_ids: torch.Tensor
    pixel_values: torch.Tensor
    rows: torch.Tensor
    inputs: dict

    @property
    def prefix_len(self) -> int:
        return self.prefix_ids.shape[1]

    @property
    def n_images(self) -> int:
        return self.prefix_ids.shape[0]


def plan(inputs, image_keys: list, *, image_token_id: int, pad_token_id: int) -> SharedPrefix | str:
    """The shared-prefix layout of a processed, left-padded batch, or why there is none.

    inputs: the processor's output (input_ids, attention_mask [B, W], pixel_values [B, ...]).
    image_keys: one hashable per row, equal for rows with the same image (e.g. its bytes)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if "pixel_values" not in inputs:
        return "the batch has no images"
    reals = [row[m.bool()] for row, m in zip(ids, mask)]  # each row without its padding
    cuts = []
    for real in reals:
        where = (real == image_token_id).nonzero()
        if len(where) == 0:
            return "a prompt has no image token"
        cuts.append(int(where[-1]) + 1)  # just after the last image token
    prefix = reals[0][:cuts[0]]
    if any(c != cuts[0] or not torch.equal(r[:c], prefix) for r, c in zip(reals, cuts)):
        return ("the prompts differ before their image tokens (the template does not put the "
                "image first)")
    if any(len(r) <= cuts[0] for r in reals):
        return "a prompt ends with its image (nothing after the shared prefix)"

    first_row: dict = {}
    rows = torch.tensor([first_row.setdefault(k, len(first_row)) for k in image_keys])
    firsts = list(dict.fromkeys(image_keys))
    pick = torch.tensor([image_keys.index(k) for k in firsts])
    p = cuts[0]
    suffixes = [r[p:] for r in reals]
    width = p + max(len(s) for s in suffixes)
    new_ids = torch.full((len(reals), width), pad_token_id, dtype=ids.dtype, device=ids.device)
    new_mask = torch.zeros((len(reals), width), dtype=mask.dtype, device=mask.device)
    new_ids[:, :p] = prefix
    new_mask[:, :p] = 1
    for i, s in enumerate(suffixes):
        new_ids[i, width - len(s):] = s
        new_mask[i, width - len(s):] = 1
    return SharedPrefix(prefix_ids=prefix.unsqueeze(0).repeat(len(firsts), 1),
                        pixel_values=inputs["pixel_values"][pick.to(ids.device)],
                        rows=rows.to(ids.device),
                        inputs=dict(input_ids=new_ids, attention_mask=new_mask))


def prefill(model, shared: SharedPrefix, *, static_len: int | None = None):
    """The KV cache of every row's prefix: one forward over the k distinct images, then each
    row's copy selected. static_len: return a StaticCache of that many positions (for a
    compiled decode step) instead of a DynamicCache."""
    out = model(input_ids=shared.prefix_ids, pixel_values=shared.pixel_values,
                attention_mask=torch.ones_like(shared.prefix_ids), use_cache=True,
                logits_to_keep=1)  # the prefix's logits are never used
    cache = forward_cache(out)
    if static_len is not None:
        return static_cache_from(model, cache, shared.rows, max_cache_len=static_len)
    select_cache_rows(cache, shared.rows)
    return cache
