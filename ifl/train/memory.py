"""Give a finished stage's memory back before the next model loads.

A stage's model, optimizer state and activations are only freed once nothing refers to them:
callers drop every reference (results keep paths, not models), then `release_memory()` runs the
cycle collector (peft wrappers, hooks and optimizers form reference cycles) and hands the CUDA
caching allocator's free blocks back, so the next stage (an NF4 7B beside LoRA states on a
24 GB card) does not start next to the previous stage's 14 GB bf16 model.
"""
from __future__ import annotations

import gc

import torch


def release_memory() -> None:
    """Collect unreachable objects and empty the CUDA cache (when CUDA is in use)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
