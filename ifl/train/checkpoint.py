"""Atomic training checkpoints: trainable weights, optimizer, scheduler, RNG states, position.

Layout under `out_dir/checkpoints/`:
    step-000050/  trainable.pt  optimizer.pt  scheduler.pt  rng-<rank>.pt  losses.csv  state.json
Only parameters with requires_grad are saved (the projector in stage 1; projector + LLM in stage
2; projector + LoRA matrices with QLoRA): frozen weights are rebuilt from the model the run was
started with, so a stage-1 checkpoint of a 7B model is a few MB. Under DeepSpeed the engine's
own (ZeRO-sharded) checkpoint replaces trainable/optimizer (frozen parameters excluded).

A checkpoint is written into a hidden temporary folder and renamed into place once complete, so
a run killed mid-write leaves the previous checkpoint as the latest one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

CHECKPOINTS = "checkpoints"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """{name: tensor} of the parameters that require grad, on CPU (names of the unwrapped model)."""
    return {name: p.detach().to("cpu", copy=True)
            for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into `model`; every trainable parameter must be present."""
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    missing, unknown = wanted - set(state), set(state) - set(params)
    if missing or unknown:
        raise ValueError(f"checkpoint does not match the model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unknown)[:3]} (was it written by another stage or "
                         "LoRA setting? Delete the checkpoints folder to start afresh)")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None (temporary folders are ignored)."""
    root = Path(out_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def _is_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type.name == "DEEPSPEED"


def save_checkpoint(accelerator, model, optimizer, scheduler, *, out_dir: Path, step: int,
                    state: dict, losses: list[dict], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; keep the newest `keep` checkpoints. All processes call
    this (each saves its RNG state; DeepSpeed shards are saved by every rank)."""
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if _is_deepspeed(accelerator):
        model.save_checkpoint(str(tmp), tag="engine", exclude_frozen_parameters=True)
    elif accelerator.is_main_process:
        torch.save(trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        pd.DataFrame(losses).to_csv(tmp / "losses.csv", index=False)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))  # last: complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted((Path(out_dir) / CHECKPOINTS).glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator, model, optimizer, scheduler) -> tuple[dict, list[dict]]:
    """Restore weights, optimizer, scheduler and this process's RNG from `path`;
    returns (state.json contents, loss rows so far)."""
    path = Path(path)
    if _is_deepspeed(accelerator):
        model.load_checkpoint(str(path), tag="engine", load_module_strict=False)
    else:
        load_trainable_state(accelerator.unwrap_model(model),
                             torch.load(path / "trainable.pt", map_location="cpu"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu",
                                             weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.exists():  # absent when resuming with more processes than before
        _set_rng_state(torch.load(rng, weights_only=False))
    losses = pd.read_csv(path / "losses.csv").to_dict("records")
    return json.loads((path / "state.json").read_text()), losses
