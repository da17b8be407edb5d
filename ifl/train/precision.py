"""Mixed precision for training: trainable weights in fp32, compute in the model's bf16/fp16.

Adam's step is about lr per weight (lr x m / sqrt(v)). A bf16 weight of 0.01 has neighbours
2^-7 x 0.01 ~ 8e-5 apart, so an update of 2e-5 (LLaVA's stage-2 lr, the QLoRA projector lr)
rounds back to the same weight: trained in pure bf16, most of the projector never moves. As in
standard mixed precision, the trainable parameters are kept in fp32 (the master copy the
optimizer updates) while the forward pass runs under autocast in the frozen weights' dtype.
DeepSpeed keeps its own fp32 master copy (bf16 section of its config), so there nothing is cast.

>>> import torch
>>> w = torch.tensor([0.01], dtype=torch.bfloat16)
>>> bool((w + 2e-5 == w).item()), bool((w.float() + 2e-5 == w.float()).item())
(True, False)
"""
from __future__ import annotations

import contextlib

import torch

HALF = (torch.bfloat16, torch.float16)


def upcast_trainable(model, compute_dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """Trainable parameters of a half-precision model to fp32, in place (the Parameter objects
    stay the same, so references to them see the fp32 weights); returns those cast."""
    if compute_dtype not in HALF:
        return []
    cast = [p for p in model.parameters() if p.requires_grad and p.dtype in HALF]
    for p in cast:
        p.data = p.data.float()
    return cast


def downcast(params: list[torch.nn.Parameter], dtype: torch.dtype) -> None:
    """Back to the model's dtype after training, so the export is one dtype throughout."""
    for p in params:
        p.data = p.data.to(dtype)


def autocast(device: torch.device | str, compute_dtype: torch.dtype):
    """Forward-pass context: autocast to `compute_dtype` for half models, else nothing."""
    if compute_dtype not in HALF:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=compute_dtype)
