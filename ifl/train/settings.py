"""The settings of one LLaVA training stage, as one object: what `train_stage` trains with and
what `train_variant` records in a variant's DONE file."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageSettings:
    """What one training stage does (`train_stage`'s settings). format: "chat" (the LLM's
    template) or "plain" (LLaVA-1.5's stage-1 format: image then caption); `train_variant` picks
    the template from it. `extra`: run controls passed on to `train_stage` as keywords (a
    progress callback, keep_checkpoints, log_every), which do not change what is trained.
    Constructors give LLaVA-1.5's values."""
    lr: float
    global_batch: int
    micro_batch: int
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    adam_eps: float = 1e-8
    max_length: int = 2048
    format: str = "chat"
    image_to_front: bool = True
    pad_to_square: bool = False
    save_every: int | None = None
    gradient_checkpointing: bool = False
    num_workers: int = 0
    preload_images: bool | None = None
    loss_norm: str = "tokens"
    extra: dict = field(default_factory=dict)  # any other train_stage keyword

    @classmethod
    def llava_stage1(cls, micro_batch: int = 32, **kw) -> "StageSettings":
        """pretrain.sh: projector only, lr 1e-3, batch 256, 'plain' prompts, square images."""
        return cls(**({"lr": 1e-3, "global_batch": 256, "micro_batch": micro_batch,
                       "format": "plain", "save_every": 200} | kw))

    @classmethod
    def llava_stage2(cls, micro_batch: int = 16, **kw) -> "StageSettings":
        """finetune.sh: projector + LLM, lr 2e-5, batch 128, chat template, images padded square."""
        return cls(**({"lr": 2e-5, "global_batch": 128, "micro_batch": micro_batch,
                       "pad_to_square": True, "save_every": 200} | kw))
