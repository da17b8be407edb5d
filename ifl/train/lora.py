"""What each stage trains, LoRA for QLoRA, and the final export as a plain LLaVA checkpoint.

    stage "projector": multi_modal_projector only            (LLaVA-1.5 pretrain, lr 1e-3)
    stage "full":      projector + language model + lm_head  (LLaVA-1.5 finetune, lr 2e-5)
    stage "full" + LoraSettings: projector + LoRA on every linear layer of the language model
        (LLaVA's finetune_lora / QLoRA recipe; the base may be 4-bit NF4)
The vision tower is frozen in every stage.

Export: a model with LoRA or a 4-bit base is rebuilt in full precision from where it came from
(`model.ifl_source`), the trained tensors are loaded into it and LoRA is merged, so the saved
folder holds ordinary weights that `LlavaForConditionalGeneration.from_pretrained` loads.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

STAGES = ("projector", "full")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the LLM's linear layers. Defaults: LLaVA-1.5's finetune_lora script
    (r 128, alpha 256; it trains with lr 2e-4 and the projector at 2e-5)."""
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    projector_lr: float | None = 2e-5  # None: the stage's lr

    def as_dict(self) -> dict:
        return asdict(self)


def base_llava(model) -> nn.Module:
    """The LlavaForConditionalGeneration inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_quantized(model) -> bool:
    return bool(getattr(base_llava(model), "is_loaded_in_4bit", False))


def lora_targets(model) -> list[str]:
    """Full names of the LLM's linear layers (q/k/v/o, gate/up/down for Llama), lm_head excluded
    as in LLaVA's find_all_linear_names; 4-bit layers count (bnb's Linear4bit is an nn.Linear)."""
    llm = base_llava(model).model.language_model
    prefix = "model.language_model."
    return [prefix + name for name, module in llm.named_modules() if isinstance(module, nn.Linear)]


def apply_lora(model, settings: LoraSettings):
    """Wrap `model` in peft LoRA (adapters on the LLM only); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=lora_targets(model), bias="none")
    return get_peft_model(model, config)


def set_trainable(model, stage: str, lora: LoraSettings | None = None):
    """Freeze/unfreeze for `stage`; returns the model to train (a PeftModel when LoRA is applied).
    The tower is put in eval mode (frozen, so dropout or drop-path there would only add noise)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if is_quantized(model) and stage == "full" and lora is None:
        raise ValueError("the LLM is loaded in 4 bits and cannot be trained directly: pass "
                         "qlora=LoraSettings() for stage 'full', or load it without quantization")
    if stage == "full" and lora is not None:
        model = apply_lora(model, lora)  # peft freezes everything but the adapters
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if stage == "full":
            for p in base_llava(model).model.language_model.parameters():
                p.requires_grad_(True)
            for p in base_llava(model).lm_head.parameters():
                p.requires_grad_(True)
    for p in base_llava(model).model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    for p in base_llava(model).model.vision_tower.parameters():
        p.requires_grad_(False)
    model.train()
    base_llava(model).model.vision_tower.eval()
    return model


def param_groups(model, lr: float, weight_decay: float, projector_lr: float | None) -> list[dict]:
    """AdamW groups in named_parameters order (stable across runs, so optimizer state resumes).
    As HF Trainer: no weight decay on biases and norms (1-d tensors)."""
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group_lr = projector_lr if projector_lr is not None and "multi_modal_projector" in name else lr
        decay = weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((group_lr, decay), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def export_model(model, processor, out: Path, *, state_dict: dict | None = None,
                 is_main_process: bool = True) -> Path:
    """Save a trained model as a plain LLaVA folder (weights + config + processor), atomically.

    state_dict: the full state gathered by accelerate (ZeRO-3); else taken from the model."""
    from ifl.train.checkpoint import load_trainable_state, trainable_state
    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}")
    if not is_main_process:
        return out
    shutil.rmtree(tmp, ignore_errors=True)
    base = base_llava(model)
    if hasattr(model, "get_base_model") or is_quantized(model):
        source = getattr(base, "ifl_source", None)
        if source is None:
            raise ValueError("a LoRA/4-bit model can only be exported when it was built by "
                             "assemble_llava or load_llava (they record model.ifl_source)")
        dtype = next(base.model.multi_modal_projector.parameters()).dtype
        full, _ = source.rebuild(dtype=dtype, device="cpu")
        if hasattr(model, "get_base_model"):  # same LoRA layout, trained tensors, then merge
            from peft import get_peft_model
            full = get_peft_model(full, model.peft_config["default"])
        set_names = {n for n, p in model.named_parameters() if p.requires_grad}
        for name, p in full.named_parameters():
            p.requires_grad_(name in set_names)
        load_trainable_state(full, trainable_state(model))
        if hasattr(full, "merge_and_unload"):
            full = full.merge_and_unload()
        full.save_pretrained(tmp)
    else:
        base.save_pretrained(tmp, state_dict=state_dict)
    processor.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def trainable_summary(model) -> dict[str, int]:
    """Trainable / total parameter counts by part (projector, llm, lora, tower)."""
    out = {"trainable": 0, "total": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        out["total"] += n
        if p.requires_grad:
            out["trainable"] += n
            part = ("lora" if "lora_" in name else "projector" if "multi_modal_projector" in name
                    else "tower" if "vision_tower" in name else "llm")
            out[part] = out.get(part, 0) + n
    return out


__all__ = ["LoraSettings", "set_trainable", "param_groups", "export_model", "lora_targets",
           "trainable_summary", "base_llava", "is_quantized", "STAGES"]
