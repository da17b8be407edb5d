"""One rank of `collect_in_processes`: `python -m ifl.collect.worker JOB.json` (started by
`accelerate launch`, which sets RANK, WORLD_SIZE and LOCAL_RANK).

The rank loads the model onto its own device (cuda:{LOCAL_RANK}, or the CPU), reads the tasks,
and collects its shard `(RANK, WORLD_SIZE)` with `collect_responses` (resumable on its own). The
ranks never talk to each other: a task's shard is a hash of its id, so no process group is
needed, and a failing rank cannot hang the others at a barrier. Everything the rank prints goes
to `<log_dir>/rank-<RANK>.log`; its end state (done or the error) to `rank-<RANK>.json`.

JOB.json (written by launch.py): loader ("module:function") and loader_kwargs (the device is
added as `device`), tasks (a parquet path), steering (a torch.save'd callable, or null), and
collect (collect_responses' keyword arguments: model_name, template (a prompts.yaml name or a
ChatTemplate's fields), out_dir, ...).
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path


def rank_files(log_dir: str | os.PathLike, rank: int) -> tuple[Path, Path]:
    """(log, status) of one rank."""
    return Path(log_dir) / f"rank-{rank}.log", Path(log_dir) / f"rank-{rank}.json"


def chat_template(value):
    """The ChatTemplate a job names: a prompts.yaml name, or a ChatTemplate's fields (a dict)."""
    from ifl.prompts import ChatTemplate, template

    if isinstance(value, str):
        return template(value)
    return ChatTemplate(**value) if isinstance(value, dict) else value


def rank_device(local_rank: int, requested: str = "auto") -> str:
    """This rank's device: requested "cpu", or cuda:{local_rank} when CUDA is there ("auto")."""
    import torch

    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return f"cuda:{local_rank}"


def run(job: dict, rank: int, world: int, local_rank: int) -> int:
    import pandas as pd
    import torch

    from ifl.collect.runner import collect_responses

    device = rank_device(local_rank, job.get("device", "auto"))
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    module, _, name = job["loader"].partition(":")
    loader = getattr(importlib.import_module(module), name)
    model, processor = loader(**job.get("loader_kwargs", {}), **({"device": device} if job.get(
        "pass_device", True) else {}))
    tasks = pd.read_parquet(job["tasks"])
    steering = torch.load(job["steering"], weights_only=False) if job.get("steering") else None
    collect = dict(job["collect"], template=chat_template(job["collect"].get("template", "llava_hf")))
    df = collect_responses(model, processor, tasks, shard=(rank, world), steering=steering,
                           progress=False, **collect)
    print(f"rank {rank}/{world} on {device}: {len(df)} rows in its shard", flush=True)
    return len(df)


def main(argv: list[str] | None = None) -> None:
    job_path = Path((argv or sys.argv[1:])[0])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    log_path, status_path = rank_files(job["log_dir"], rank)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    status_path.unlink(missing_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        os.dup2(log.fileno(), 1)  # the rank's own log, also for C-level output (CUDA, NCCL)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        import logging

        logging.basicConfig(level=logging.INFO, stream=log, force=True,
                            format=f"%(asctime)s rank {rank} %(name)s %(levelname)s: %(message)s")
        signal.signal(signal.SIGTERM, _terminated)
        try:
            rows = run(job, rank, world, local_rank)
        except BaseException as exc:  # KeyboardInterrupt too: the status says how the rank ended
            traceback.print_exc()
            _write_status(status_path, dict(rank=rank, ok=False, error=f"{type(exc).__name__}: {exc}"))
            raise SystemExit(1)
        _write_status(status_path, dict(rank=rank, ok=True, rows=rows))


def _terminated(signum, frame):
    """SIGTERM (torchrun stops the other ranks when one fails) as an exception, so that
    collect_responses writes the rows it has on the way out."""
    raise SystemExit("SIGTERM (stopped by the launcher, e.g. because another rank failed)")


def _write_status(path: Path, status: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
