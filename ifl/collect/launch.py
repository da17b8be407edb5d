"""`collect_in_processes`: one model's collection spread over N processes with `accelerate launch`.

    df = collect_in_processes(
        tasks, processes=8, out_dir=stage.path("responses"),
        loader="ifl.models:load_llava",
        loader_kwargs=dict(source="llava-hf/llava-1.5-7b-hf", dtype="bfloat16", quantization=None),
        collect=dict(model_name="llava-1.5-7b", template="llava_hf", max_new_tokens=128,
                     batch_size=64, speedups={"share_prefix": True}))

Each rank (ifl/collect/worker.py) loads the model on its own device (cuda:{LOCAL_RANK}, the CPU
where there is no GPU), collects shard (RANK, N) with `collect_responses` (resumable by itself),
and logs to `<out_dir>/<model>/launch/rank-<r>.log`. When all ranks are done the shards are
merged (`merge_shards`) and the merged rows returned: the same rows a 1-process run gives
(greedy; batched == one at a time, tests/test_collect.py), only faster.

A failed rank raises RankFailedError naming that rank's log (and quoting its end). A rerun
launches again and every shard does only what is missing; a run whose rows are all stored
launches nothing. Several nodes: `machines` > 1 with accelerate's machine-rank options, one
call per node (docs/collect_at_scale.md); each node merges what it sees, the last to finish
has all rows (or call `merge_shards` once afterwards).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from ifl.collect.engine import CONDITIONS, build_items
from ifl.collect.store import KEY, load_responses, merge_shards, model_dir
from ifl.collect.worker import chat_template, rank_files


class RankFailedError(RuntimeError):
    """A rank of `collect_in_processes` failed; the message names its log."""


def accelerate_command(job_path: Path, *, processes: int, machines: int = 1, machine_rank: int = 0,
                       main_address: str | None = None, main_port: int = 29500,
                       extra: Sequence[str] = ()) -> list[str]:
    """The `accelerate launch` command line that starts `processes` ranks per machine.
    `--multi_gpu` makes accelerate start them through torch.distributed.run (also without a GPU:
    the ranks only read RANK/WORLD_SIZE/LOCAL_RANK and never form a process group)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
           str(processes * machines), "--num_machines", str(machines), "--machine_rank",
           str(machine_rank), "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(main_port)]
    if processes * machines > 1:
        cmd.append("--multi_gpu")
    if main_address:
        cmd += ["--main_process_ip", main_address]
    return cmd + list(extra) + ["-m", "ifl.collect.worker", str(job_path)]


def collect_in_processes(tasks: pd.DataFrame, *, processes: int, out_dir: str | os.PathLike,
                         collect: dict, loader: str = "ifl.models:load_llava",
                         loader_kwargs: dict | None = None, steering=None, device: str = "auto",
                         machines: int = 1, machine_rank: int = 0, main_address: str | None = None,
                         main_port: int = 29500, threads: int | None = None,
                         pass_device: bool = True, accelerate_args: Sequence[str] = (),
                         timeout: float | None = None, wait_s: float = 0) -> pd.DataFrame:
    """Collect every missing response of `tasks` with `processes` ranks per machine; return the
    merged rows of all tasks (as `collect_responses` on one process would).

    collect: collect_responses' keyword arguments (model_name, template, max_new_tokens,
        batch_size, speedups, conditions, ...; JSON-serialisable) without shard and steering.
    loader: "module:function" returning (model, processor), called in each rank with
        loader_kwargs (+ device="cuda:{local_rank}" or "cpu" when pass_device).
    steering: a picklable steering callable (e.g. ifl.steer.LanguageSteering), or None.
    device: "auto" (the rank's GPU, else CPU) or "cpu".
    machines, machine_rank, main_address, main_port: accelerate's multi-node options.
    threads: torch threads per rank (CPU runs).
    wait_s: machines > 1: after this node's ranks are done, wait up to this long for the other
        nodes' rows to be stored, then merge (0: return the rows stored so far at once; a
        notebook, which goes on with the rows, waits: RankFailedError if they do not come).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if {"shard", "steering", "out_dir"} & set(collect):
        raise ValueError("collect must not set shard, steering or out_dir (the launcher does)")
    if not isinstance(collect.get("template", ""), str):
        # a ChatTemplate as its fields, so the ranks prompt with this one (its model's
        # image_first included), not with the prompts.yaml entry of the same name
        collect = dict(collect, template=dataclasses.asdict(collect["template"]))
    name = collect["model_name"]
    root = model_dir(out_dir, name) / "launch"
    root.mkdir(parents=True, exist_ok=True)
    expected = _expected(tasks, collect)
    if _all_stored(out_dir, name, expected):
        return merge_shards(out_dir, name, expected=expected)

    job = dict(loader=loader, loader_kwargs=loader_kwargs or {}, pass_device=pass_device,
               device=device, threads=threads, tasks=str(root / "tasks.parquet"),
               steering=None, log_dir=str(root),
               collect=dict(collect, out_dir=str(out_dir)))
    tasks.to_parquet(job["tasks"])
    if steering is not None:
        job["steering"] = str(root / "steering.pt")
        torch.save(steering, job["steering"])
    job_path = root / "job.json"
    job_path.write_text(json.dumps(job, indent=1, default=str), encoding="utf-8")
    world = processes * machines
    ranks = range(machine_rank * processes, (machine_rank + 1) * processes)
    for r in ranks:
        rank_files(root, r)[1].unlink(missing_ok=True)
    cmd = accelerate_command(job_path, processes=processes, machines=machines,
                             machine_rank=machine_rank, main_address=main_address,
                             main_port=main_port, extra=accelerate_args)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p)}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    failed = []
    for r in ranks:
        log, status = rank_files(root, r)
        state = json.loads(status.read_text()) if status.exists() else None
        if not state or not state.get("ok"):
            failed.append((r, log, state))
    if failed:
        # torchrun stops the other ranks when one fails: name the one that failed by itself
        failed.sort(key=lambda f: (f[2] is None or "SIGTERM" in f[2].get("error", ""), f[0]))
        r, log, state = failed[0]
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
        why = state["error"] if state else "it ended without a status (killed, or never started)"
        raise RankFailedError(
            f"{len(failed)} of {len(ranks)} ranks failed (of {world} in all); rank {r}: {why}. "
            f"Its log: {log}\n--- end of {log.name} ---\n{tail}\n--- accelerate launch "
            f"(exit {run.returncode}): {shlex.join(cmd)}\n{run.stderr[-1500:]}\nA rerun does "
            "only what is missing.")
    if run.returncode != 0:
        raise RankFailedError(f"accelerate launch exited {run.returncode} although every rank "
                              f"reported done: {shlex.join(cmd)}\n{run.stderr[-2000:]}")
    if machines > 1 and not _wait_for_other_nodes(out_dir, name, expected, wait_s):
        if wait_s:
            raise RankFailedError(
                f"{name}: this node's ranks are done, but after {wait_s:.0f} s the rows of the other "
                f"nodes are still missing under {model_dir(out_dir, name)} (a node failed, or "
                "does not share this output folder?); see their rank logs there. A rerun does "
                "only what is missing.")
        return load_responses(out_dir, name)  # other nodes still running: merge later
    return merge_shards(out_dir, name, expected=expected)


def _wait_for_other_nodes(out_dir, name, expected: pd.DataFrame, wait_s: float,
                          poll_s: float = 10) -> bool:
    """Whether every expected row is stored, checked until `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while not _all_stored(out_dir, name, expected):
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
    return True


def _expected(tasks: pd.DataFrame, collect: dict) -> pd.DataFrame:
    """The (task_id, condition) pairs the run must produce."""
    t = collect.get("template", "llava_hf")
    t = chat_template(t)
    items = build_items(tasks, t, collect.get("conditions", CONDITIONS))
    return pd.DataFrame([(it.task_id, it.condition) for it in items], columns=KEY)


def _all_stored(out_dir, name, expected: pd.DataFrame) -> bool:
    have = set(map(tuple, load_responses(out_dir, name)[KEY].itertuples(index=False)))
    return all((t, c) in have for t, c in zip(expected.task_id, expected.condition))
