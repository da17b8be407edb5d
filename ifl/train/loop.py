"""`train_stage`: one LLaVA training stage, the same code for the miniature (CPU) and the paper.

    res = train_stage(model, processor, "captions.json", "images/", "plain",
                      StageSettings.llava_stage1(micro_batch=32), stage="projector",
                      out_dir="runs/x/vicuna-clip-en/stage1")
    res.losses.tail()   # step, loss, lr, grad_norm, targets, samples, epoch, seconds

Batch arithmetic: each optimizer step sees `global_batch` records, split over the processes of
`accelerate launch` and, within a process, into `global_batch / (micro_batch * processes)`
accumulated micro-batches. The loss of a step is the mean cross-entropy over all answer tokens
of the global batch (HF Trainer's `num_items_in_batch` convention), so 1 x 4 and 4 x 1 give the
same update, on one process or eight.

Resume: with `save_every`, a checkpoint is written every that many optimizer steps; a rerun with
the same settings continues from the newest one and ends with the weights of an uninterrupted
run (sample order is a function of the step, RNG and optimizer state are restored). A finished
stage (`out_dir/result.json`) is not trained again: its result is read back.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from tqdm.auto import tqdm
# at import time, not inside train_stage: the first import of transformers.optimization keeps
# the importing frames alive, and with them train_stage's locals (the model) for good
from transformers import get_scheduler

from ifl.progress import report as report_progress
from ifl.prompts import ChatTemplate
from ifl.stage import write_json_atomic
from ifl.train.chat_template import give_chat_template
from ifl.train.checkpoint import CHECKPOINTS, latest_checkpoint, load_checkpoint, save_checkpoint
from ifl.train.data import IGNORE, LlavaDataset, SamplePlan
from ifl.train.lora import (LoraSettings, base_llava, export_model, param_groups, set_trainable,
                            trainable_summary)
from ifl.train.precision import autocast, downcast, upcast_trainable
from ifl.train.settings import StageSettings

RESULT = "result.json"
MODEL = "model"


@dataclass
class TrainResult:
    """losses: one row per optimizer step. model: the trained in-memory model (a PeftModel with
    LoRA), None when the stage had already finished and was only read back."""
    losses: pd.DataFrame
    model_dir: Path
    steps: int
    seconds: float
    resumed_from: int | None = None
    cached: bool = False
    summary: dict = field(default_factory=dict)
    model: object | None = None


def load_records(records: list[dict] | str | Path) -> list[dict]:
    if isinstance(records, (str, Path)):
        return json.loads(Path(records).read_text(encoding="utf-8"))
    return list(records)


def token_loss_sum(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token cross-entropies, logits kept). Logits are computed only where the
    next token is an answer token (2-d boolean `logits_to_keep`), not over the whole sequence.
    batch: input_ids/attention_mask/labels (B, L), pixel_values (n_img, 3, H, W) or None."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE            # position p predicts token p+1
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], logits_to_keep=keep, use_cache=False)
    logits = out.logits                                 # (n_targets, V)
    targets = labels[:, 1:][keep[:, :-1]]               # (n_targets,)
    return F.cross_entropy(logits.float(), targets, reduction="sum") + 0.0 * logits.sum(), logits


def _finished(out_dir: Path, settings: dict) -> TrainResult | None:
    path = out_dir / RESULT
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["settings"] != json.loads(json.dumps(settings, default=str)):
        changed = sorted(k for k in settings if saved["settings"].get(k) != json.loads(
            json.dumps(settings[k], default=str)))
        raise ValueError(f"{out_dir} holds a finished stage trained with other settings "
                         f"({', '.join(changed)}); use another out_dir or delete this one")
    return TrainResult(losses=pd.read_csv(out_dir / "losses.csv"), model_dir=out_dir / MODEL,
                       steps=saved["steps"], seconds=saved["seconds"], cached=True, summary=saved)


def train_stage(model, processor, records: list[dict] | str | Path, image_folder: str | Path | None,
                template: ChatTemplate | str, settings: StageSettings, *, stage: str,
                out_dir: str | Path, seed: int = 0, qlora: LoraSettings | None = None,
                resume: bool = True, keep_checkpoints: int = 2, log_every: int = 10,
                progress: bool = True,
                callback: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train one stage and save the result to `out_dir/model` (save_pretrained + processor).

    stage: "projector" (LLaVA stage 1) or "full" (stage 2; with `qlora`, LoRA on the LLM).
    template: ChatTemplate or "plain" (LLaVA-1.5 stage-1 format). callback(step, row) runs after
    every optimizer step (and its checkpoint); raising in it interrupts the run.
    resume=False deletes this stage's checkpoints and result first.
    loss_norm: "tokens" (mean over the answer tokens of the global batch; accumulation-invariant)
    or "micro_batch" (mean of per-micro-batch token means, what LLaVA's 2023 HF Trainer did).
    """
    lr, global_batch, micro_batch = settings.lr, settings.global_batch, settings.micro_batch
    epochs, max_steps, warmup_ratio = settings.epochs, settings.max_steps, settings.warmup_ratio
    scheduler, weight_decay, adam_eps = settings.scheduler, settings.weight_decay, settings.adam_eps
    max_grad_norm, max_length, loss_norm = settings.max_grad_norm, settings.max_length, settings.loss_norm
    image_to_front, pad_to_square = settings.image_to_front, settings.pad_to_square
    preload_images, num_workers = settings.preload_images, settings.num_workers
    save_every, gradient_checkpointing = settings.save_every, settings.gradient_checkpointing
    out_dir = Path(out_dir)
    records = load_records(records)
    recorded = {"stage": stage, "lr": lr, "global_batch": global_batch, "epochs": epochs,
                "max_steps": max_steps, "warmup_ratio": warmup_ratio, "scheduler": scheduler,
                "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "adam_eps": adam_eps,
                "max_length": max_length, "seed": seed, "n_records": len(records),
                "template": template if isinstance(template, str) else template.name,
                "qlora": qlora.as_dict() if qlora and stage == "full" else None,
                "image_to_front": image_to_front, "pad_to_square": pad_to_square,
                "loss_norm": loss_norm}
    if loss_norm not in ("tokens", "micro_batch"):
        raise ValueError(f"loss_norm must be 'tokens' or 'micro_batch', got {loss_norm!r}")
    if resume and (done := _finished(out_dir, recorded)) is not None:
        return done
    accelerator, accum, world, global_batch, micro_batch = _accelerator(
        global_batch, micro_batch, max_grad_norm, n_records=len(records))
    if not resume and accelerator.is_main_process:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
        (out_dir / RESULT).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    set_seed(seed)  # LoRA init, dropout; restored from the checkpoint on resume

    model = set_trainable(model, stage, qlora if stage == "full" else None)
    # frozen weights' dtype = compute dtype; trainable ones get an fp32 master copy (not under
    # DeepSpeed, whose bf16 mode keeps its own), or updates of ~lr round away in bf16
    compute_dtype = next(base_llava(model).model.vision_tower.parameters()).dtype
    is_ds = accelerator.distributed_type.name == "DEEPSPEED"
    upcast = [] if is_ds else upcast_trainable(model, compute_dtype)
    if gradient_checkpointing:
        base_llava(model).gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    ds = LlavaDataset(records, image_folder, processor, template, max_length=max_length,
                      image_to_front=image_to_front, pad_to_square=pad_to_square,
                      preload_images=preload_images, progress=progress and accelerator.is_main_process)
    plan = SamplePlan(len(ds), global_batch, seed)
    total = plan.total_steps(epochs, max_steps)
    projector_lr = qlora.projector_lr if qlora and stage == "full" else None
    optimizer = torch.optim.AdamW(param_groups(model, lr, weight_decay, projector_lr), lr=lr,
                                  betas=(0.9, 0.999), eps=adam_eps)
    sched = get_scheduler(scheduler, optimizer, num_warmup_steps=math.ceil(warmup_ratio * total),
                          num_training_steps=total)
    summary = {"records": len(records), "dropped": len(records) - len(ds),
               "accumulation": accum, "processes": world, "micro_batch": micro_batch,
               "total_steps": total, **trainable_summary(model)}
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.gradient_accumulation_steps != accum:
        raise ValueError(f"the accelerate config forces gradient_accumulation_steps="
                         f"{accelerator.gradient_accumulation_steps}; remove it: train_stage sets "
                         f"global_batch / (micro_batch x processes) = {accum}")
    unwrapped = accelerator.unwrap_model(model)
    params = [p for p in unwrapped.parameters() if p.requires_grad]
    projector = list(base_llava(unwrapped).model.multi_modal_projector.parameters())
    pixel_dtype = next(base_llava(unwrapped).model.vision_tower.parameters()).dtype

    start, rows, resumed_from = 0, [], None
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None:
        state, rows = load_checkpoint(ckpt, accelerator, model, optimizer, sched)
        if state["settings"] != json.loads(json.dumps(recorded, default=str)):
            raise ValueError(f"{ckpt} was written with other settings; pass resume=False (or "
                             f"delete {out_dir / CHECKPOINTS}) to start this stage afresh")
        start = resumed_from = state["step"]

    # every process walks the same steps; its share of each global batch comes from the plan
    work = [mb for s in range(start, total)
            for mb in plan.micro_batches(s, micro_batch, accelerator.process_index, world)]
    # its own generator: a DataLoader iterator draws a seed, which must not shift the global RNG
    # that was just restored from the checkpoint (dropout would differ from an unbroken run)
    loader = torch.utils.data.DataLoader(_MicroBatches(ds, work), batch_size=None, shuffle=False,
                                         num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                                         generator=torch.Generator().manual_seed(seed))
    batches = iter(loader)
    bar = tqdm(total=total, initial=start, desc=f"{stage} {out_dir.name}", unit="step",
               disable=not (progress and accelerator.is_main_process))
    t0, before = time.perf_counter(), rows[-1]["seconds"] if rows else 0.0
    for step in range(start, total):
        n_targets = int(ds.n_targets[plan.global_indices(step)].sum())
        # the stage's lr now (group 0 may be the projector's own lr under QLoRA)
        lr_now = lr * sched.get_last_lr()[0] / sched.base_lrs[0]
        local, grad_norm = _optimizer_step(model, optimizer, sched, accelerator, batches, accum,
                                           scale=None if loss_norm == "micro_batch"
                                           else accum * world / max(n_targets, 1),
                                           params=params, projector=projector,
                                           pixel_dtype=pixel_dtype, max_grad_norm=max_grad_norm,
                                           compute_dtype=None if is_ds else compute_dtype)
        loss = accelerator.reduce(local, "sum").item() / max(n_targets, 1)
        rows.append({"step": step + 1, "loss": loss, "lr": lr_now,
                     "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                     "targets": n_targets, "samples": (step + 1) * global_batch,
                     "epoch": (step + 1) * global_batch / len(ds),
                     "seconds": before + time.perf_counter() - t0})
        bar.update(1)
        report_progress(f"train {out_dir.parent.name} {out_dir.name}", step + 1, total)
        if (step + 1) % log_every == 0 or step + 1 == total:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr_now:.2e}")
        if save_every and (step + 1) % save_every == 0:
            save_checkpoint(accelerator, model, optimizer, sched, out_dir=out_dir, step=step + 1,
                            state={"step": step + 1, "samples": (step + 1) * global_batch,
                                   "settings": recorded}, losses=rows, keep=keep_checkpoints)
        if callback is not None:
            callback(step + 1, rows[-1])
    bar.close()

    downcast(upcast, compute_dtype)  # the saved model is in one dtype, as it was loaded
    state_dict = accelerator.get_state_dict(model) if is_ds else None  # gathers ZeRO-3 shards
    if isinstance(template, ChatTemplate):  # saved like a hub checkpoint: usable by apply_chat_template
        give_chat_template(processor, template)
    export_model(unwrapped, processor, out_dir / MODEL, state_dict=state_dict,
                 is_main_process=accelerator.is_main_process)
    losses = pd.DataFrame(rows)
    seconds = rows[-1]["seconds"] if rows else 0.0
    if accelerator.is_main_process:
        losses.to_csv(out_dir / "losses.csv", index=False)
        write_json_atomic(out_dir / RESULT, {"settings": recorded, "steps": total,
                                             "seconds": seconds, "resumed_from": resumed_from,
                                             **summary})  # written last: the stage is finished
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # only needed to resume
    accelerator.wait_for_everyone()
    unwrapped.eval()
    return TrainResult(losses=losses, model_dir=out_dir / MODEL, steps=total, seconds=seconds,
                       resumed_from=resumed_from, summary={"settings": recorded, **summary},
                       model=unwrapped)


def fit_to_data(n_records: int, global_batch: int, micro_batch: int, world: int) -> tuple[int, int]:
    """(global_batch, micro_batch) for a data set smaller than one global batch: one step then
    covers the data once instead of repeating records many times within a step (which made a
    2-record smoke run cost 128 QLoRA forward passes per step). Unchanged for real data.

    >>> fit_to_data(2, 256, 16, 1), fit_to_data(100, 64, 16, 2), fit_to_data(10_000, 256, 16, 1)
    ((2, 2), (64, 16), (256, 16))
    """
    if n_records >= global_batch:
        return global_batch, micro_batch
    micro = max(1, min(micro_batch, n_records // world))
    return max(micro * world, (n_records // (micro * world)) * micro * world), micro


def _accelerator(global_batch: int, micro_batch: int, max_grad_norm: float | None,
                 n_records: int | None = None):
    """(Accelerator, accumulation steps, processes, global batch, micro batch). The Accelerator
    comes first: it reads the launcher's settings (ACCELERATE_USE_CPU, DeepSpeed, ...) that a
    bare PartialState() misses. With `n_records`, batches shrink to fit a tiny data set."""
    from accelerate import Accelerator
    accelerator = Accelerator()
    world = accelerator.num_processes
    if n_records is not None:
        global_batch, micro_batch = fit_to_data(n_records, global_batch, micro_batch, world)
    accum, rest = divmod(global_batch, micro_batch * world)
    if rest or accum == 0:
        raise ValueError(f"global_batch={global_batch} must be a multiple of micro_batch x "
                         f"processes = {micro_batch} x {world}")
    accelerator.gradient_accumulation_steps = accum
    if accelerator.distributed_type.name == "DEEPSPEED":
        stage_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config,
                               micro_batch=micro_batch, accum=accum, world=world,
                               max_grad_norm=max_grad_norm)
    return accelerator, accum, world, global_batch, micro_batch


def stage_deepspeed_config(config: dict, *, micro_batch: int, accum: int, world: int,
                           max_grad_norm: float | None) -> dict:
    """Write this stage's batch arithmetic and clipping into DeepSpeed's config (in place; also
    returned). accelerate's state is a process-wide singleton: the config dict a stage resolves
    (its "auto" train_batch_size becomes 256 in stage 1) is the one the next stage gets, so
    every batch field is set per stage, or stage 2 (128 = 16 x 1 x 8) fails DeepSpeed's check
    train_batch_size == micro x accumulation x processes.

    >>> cfg = {"train_batch_size": "auto", "zero_optimization": {"stage": 2}}
    >>> stage_deepspeed_config(cfg, micro_batch=32, accum=1, world=8, max_grad_norm=1.0)["train_batch_size"]
    256
    >>> stage_deepspeed_config(cfg, micro_batch=16, accum=1, world=8, max_grad_norm=1.0)["train_batch_size"]
    128
    """
    config.update({"train_batch_size": micro_batch * accum * world,
                   "train_micro_batch_size_per_gpu": micro_batch,
                   "gradient_accumulation_steps": accum,
                   "gradient_clipping": max_grad_norm or 0.0})
    return config


def _optimizer_step(model, optimizer, sched, accelerator, batches, accum: int, *,
                    scale: float | None, params, projector, pixel_dtype, max_grad_norm,
                    compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, object]:
    """`accum` micro-batches, then one optimizer step. Each micro-batch's summed token loss is
    scaled by accum x processes / answer tokens of the global batch: after accelerate's division
    by accum and DDP's mean over processes, the gradient is that of the global token mean.
    scale=None: divide by the micro-batch's own token count instead (loss_norm="micro_batch").
    compute_dtype: bf16/fp16 runs the forward pass under autocast (fp32 master weights).
    Returns (this process's summed token loss, grad norm before clipping or None)."""
    local = torch.zeros((), device=accelerator.device)
    grad_norm = None
    for _ in range(accum):
        batch = {k: (v.to(accelerator.device) if v is not None else None)
                 for k, v in next(batches).items()}
        if batch["pixel_values"] is not None:
            batch["pixel_values"] = batch["pixel_values"].to(pixel_dtype)
        with accelerator.accumulate(model):
            with autocast(accelerator.device, compute_dtype or torch.float32):
                loss_sum, logits = token_loss_sum(model, batch)
            if batch["pixel_values"] is None:  # keep the projector in the graph (DDP)
                loss_sum = loss_sum + 0.0 * sum(p.sum() for p in projector)
            accelerator.backward(loss_sum * (scale if scale is not None
                                             else 1.0 / max(logits.shape[0], 1)))
            local += loss_sum.detach()
            if accelerator.sync_gradients:
                if max_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                sched.step()
                optimizer.zero_grad(set_to_none=True)
    return local, grad_norm


class _MicroBatches(torch.utils.data.Dataset):
    """The micro-batches still to run, in order; a DataLoader over it overlaps image loading
    (num_workers > 0) with compute when images are read from disk."""

    def __init__(self, ds: LlavaDataset, work: list[list[int]]):
        self.ds, self.work = ds, work

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, k: int) -> dict:
        return self.ds.batch(self.work[k])
