"""Reading and writing the LLM's residual stream at one named site, through forward hooks that
always come off again (context managers, try/finally) and never edit a tensor in place.

Site convention (docs/steering_cka_umap.md §0), written beside every result:

    index 0      the LLM's input: the input of decoder layer 0 (text-token embeddings and the
                 projector's image features, merged; Gemma's sqrt(width) scale included)
    index l + 1  the output of decoder layer l, i.e. `decoder_layers(model)[l]` (0-based)

so `index` equals transformers' `hidden_states[index]` for every index but the last (whose
`hidden_states` entry is after the final norm; ours is the raw block output). Steering at
`layer=l` writes at index l + 1, and its vector is read at that same index.

>>> convention(10, 32)["hidden_states_index"]
11
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ifl.compat import decoder_layers, retuple, untuple

SITE = "block_output"


def convention(layer: int, n_layers: int) -> dict:
    """What `layer` means, to save with every result that names one."""
    return {"site": SITE, "layer": layer, "hidden_states_index": layer + 1, "n_layers": n_layers,
            "meaning": f"output of decoder layer {layer} (0-based) of {n_layers}; "
                       f"== hidden_states[{layer + 1}] (the last entry of hidden_states is post-norm)"}


@contextmanager
def capture(model: nn.Module, indices: Sequence[int],
            select: Callable[[torch.Tensor], torch.Tensor] | None = None
            ) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record the residual stream at site `indices` (see the module docstring) on every forward
    inside the block: {index: [one tensor per forward]}, each [batch, seq, hidden] or whatever
    `select` makes of it, detached and moved to the CPU in float32 (so a 4-bit model on a GPU
    keeps its memory: only what `select` keeps leaves the device)."""
    layers = decoder_layers(model)
    n = len(layers)
    bad = [i for i in indices if not 0 <= i <= n]
    if bad:
        raise ValueError(f"site indices {bad} out of range: 0 (LLM input) .. {n} (output of layer {n - 1})")
    store: dict[int, list[torch.Tensor]] = {i: [] for i in indices}

    def keep(index: int, h: torch.Tensor) -> None:
        h = h.detach()
        store[index].append((select(h) if select else h).to("cpu", torch.float32))

    handles = []
    try:
        if 0 in store:
            handles.append(layers[0].register_forward_pre_hook(
                lambda mod, args, kwargs: keep(0, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True))
        for index in (i for i in store if i > 0):
            handles.append(layers[index - 1].register_forward_hook(
                lambda mod, args, out, index=index: keep(index, untuple(out))))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def add_to_layer(model: nn.Module, layer: int, vector: torch.Tensor,
                 min_position: torch.Tensor | int | None = None) -> Iterator[None]:
    """Add `vector` [hidden] to the output of decoder layer `layer` at every position whose
    absolute position id is >= `min_position` (an int, or a tensor [batch] for one threshold
    per row); None adds it everywhere.

    Positions are read from the `position_ids` the layer receives, never from the slice of
    the sequence this forward happens to carry: with a KV cache a decode step carries one
    column, without one it carries all, and the absolute position is the same either way (a
    relative slice would silently stop steering once the cache is on: docs/steering_cka_umap.md §1.3)."""
    block = decoder_layers(model)[layer]

    def hook(mod, args, kwargs, out):
        h = untuple(out)
        v = vector.to(device=h.device, dtype=h.dtype)
        if min_position is not None:
            positions = kwargs.get("position_ids")
            if positions is None:
                raise RuntimeError("decoder layer got no position_ids; ifl/compat.py must learn how "
                                   "this transformers version passes positions to layers")
            threshold = torch.as_tensor(min_position, device=positions.device).reshape(-1, 1)
            if threshold.shape[0] not in (1, h.shape[0]):
                raise ValueError(f"min_position has {threshold.shape[0]} rows, the batch {h.shape[0]}")
            v = (positions >= threshold).unsqueeze(-1).to(h.dtype) * v  # [batch, seq, hidden]
        return retuple(out, h + v)  # out of place: the layer's own output tensor is untouched

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
