"""Learning rates per training mode, resolved in one place.

Each mode has its recipe's rates (haotian-liu/LLaVA scripts/v1_5): stage 1 is pretrain.sh
(projector, lr 1e-3) in both; stage 2 is finetune.sh (full fine-tune, lr 2e-5, the projector at
the same rate) or finetune_lora.sh (LoRA lr 2e-4, projector `mm_projector_lr` 2e-5). A rate the
user sets wins; an unset one comes from the mode's recipe, so switching `training` never keeps
the other mode's rate.

>>> learning_rates("qlora")
LearningRates(stage1=0.001, stage2=0.0002, projector=2e-05)
>>> learning_rates("full")
LearningRates(stage1=0.001, stage2=2e-05, projector=None)
>>> learning_rates("full", stage2=1e-5).stage2
1e-05
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LearningRates:
    stage1: float
    stage2: float           # the LLM (full) or the LoRA matrices (qlora)
    projector: float | None  # stage 2's projector; None = stage2's rate


RECIPES = {
    "full": LearningRates(stage1=1e-3, stage2=2e-5, projector=None),    # pretrain.sh + finetune.sh
    "qlora": LearningRates(stage1=1e-3, stage2=2e-4, projector=2e-5),   # + finetune_lora.sh
}


def learning_rates(training: str, *, stage1: float | None = None, stage2: float | None = None,
                   projector: float | None = None) -> LearningRates:
    """The mode's recipe with the rates the user set (not None) in place of its own."""
    if training not in RECIPES:
        raise ValueError(f"training must be one of {sorted(RECIPES)}, got {training!r}")
    if training == "full" and projector is not None:
        raise ValueError("a separate stage-2 projector lr exists only with training: qlora "
                         "(LLaVA's finetune.sh trains the projector at the stage-2 lr)")
    given = {k: v for k, v in {"stage1": stage1, "stage2": stage2, "projector": projector}.items()
             if v is not None}
    return replace(RECIPES[training], **given)
