"""What every stage needs to run, below the stages: the notebook's opening call, the device,
CPU threads, freeing memory between models, loading a model from a row of a models table (or
collecting its responses in several processes), and the seeded choice of parallel items.

A stage module (ifl/stages/) imports this module and the engines, never another stage.

>>> resolve_device("cpu")
'cpu'
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ifl.params import from_notebook
from ifl.stage import Stage, open_stage

MINI_TEMPLATE = "llava_hf"  # the chat format the miniature's LMs were pretrained in


@dataclass(frozen=True)
class Session:
    """What a notebook's first code cell gets: common params, its own params, its Stage and the
    device it runs on (`common.device` with "auto" resolved)."""
    common: Any
    p: Any
    stage: Stage
    device: str

    def __iter__(self):
        return iter((self.common, self.p, self.stage, self.device))


def begin(namespace: dict[str, Any], name: str) -> Session:
    """Open notebook `name`: its params (re-validated from the notebook's variables, so values
    papermill injected or a reader edited meet the same schema), its Stage and the device.

    common, p, stage, device = begin(globals(), "03_collect_responses")
    """
    common, p = from_notebook(namespace, name)
    stage = open_stage(name, output_root=common.output_root, run_name=common.run_name)
    return Session(common, p, stage, resolve_device(common.device))


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class torch_threads:
    """Run a block with `n` torch threads (None: unchanged), restoring the old count after.
    Reusable: one instance may guard several blocks."""

    def __init__(self, n: int | None):
        self.n = n
        self.old: int | None = None

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


def cpu_threads(n: int | None, device: str) -> torch_threads:
    """`n` torch threads while running on the CPU; on a GPU the thread count is left alone."""
    return torch_threads(n if device == "cpu" else None)


def free_memory() -> None:
    """Release a model that was just deleted: Python's garbage and the GPU's cached blocks."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def variant_template(llm: str, world: str) -> str:
    """Chat template of a trained variant: the miniature's LMs all share MINI_TEMPLATE; a real
    LLM keeps its own."""
    if world == "miniature":
        return MINI_TEMPLATE
    from ifl.models import template_for

    return template_for(llm).name


def run_template(row: Any):
    """The chat template a models-table row prompts with (`ifl.prompts.ChatTemplate`), its
    `image_first` included (a table written before that column existed: True)."""
    import dataclasses

    from ifl.prompts import template

    image_first = getattr(row, "image_first", True)
    image_first = True if pd.isna(image_first) else bool(image_first)
    return dataclasses.replace(template(row.template), image_first=image_first)


def load_model(row: Any, *, dtype: str, quantization: str, device: str):
    """(model, processor) of one row of a models table (a dict, a namedtuple from itertuples or
    a Series): its `source` and `revision` (None or NaN: the default). quantization 'none' is
    no quantization."""
    from ifl.models import load_llava

    return load_llava(**_loader_kwargs(row, dtype, quantization), device=device)


def _loader_kwargs(row: Any, dtype: str, quantization: str) -> dict:
    """`load_llava`'s arguments for a models-table row, except the device."""
    get = row.get if isinstance(row, (dict, pd.Series)) else lambda key: getattr(row, key, None)
    revision = get("revision")
    if revision is not None and pd.isna(revision):
        revision = None
    return dict(source=str(get("source")), revision=revision, dtype=dtype,
                quantization=None if quantization == "none" else quantization)


# How long a node whose ranks are done waits for the other nodes' rows (they end together:
# torchrun's agents leave through a common exit barrier; this covers a slow shared file system)
NODES_WAIT_S = 900
MACHINE_KEYS = ("machines", "machine_rank", "main_address", "main_port")


def machine_options(p: Any) -> dict:
    """The multi-node keys of a collecting block (03_collect_responses, 07_steering), as
    `collect_in_ranks` takes them."""
    return {key: getattr(p, key) for key in MACHINE_KEYS}


def launches(p: Any) -> bool:
    """Whether a collecting block's collection runs in ranks started by `accelerate launch`:
    more than one process on this node, or several nodes (even with one process each)."""
    return p.processes * p.machines > 1


def collect_in_ranks(row: Any, tasks: pd.DataFrame, *, processes: int, out_dir, dtype: str,
                     quantization: str, device: str, threads: int | None, collect: dict,
                     steering=None, key: str = "processes", machines: int = 1,
                     machine_rank: int = 0, main_address: str | None = None,
                     main_port: int = 29500) -> pd.DataFrame:
    """A models-table row's responses to `tasks` from `processes` ranks started by `accelerate
    launch` (ifl.collect.launch): each loads the row's model on cuda:<local rank> (the CPU when
    `device` is cpu) and collects its shard; the merged rows are returned. `collect` holds
    collect_responses' keyword arguments; `steering` a picklable steering callable (its vector
    is handed to the ranks). A failed rank raises RankFailedError naming its log; a rerun does
    only what is missing. `key` names the param in errors.

    machines > 1: this node starts its `processes` ranks as node `machine_rank` of `machines`
    meeting at main_address:main_port, and waits until the other nodes' rows are stored too
    (`NODES_WAIT_S`), so every node's notebook goes on with all the rows."""
    import dataclasses

    import torch

    from ifl.collect.launch import collect_in_processes

    if device != "cpu" and torch.cuda.device_count() < processes:
        raise ValueError(f"{key}={processes}, but {torch.cuda.device_count()} GPUs are visible: "
                         "one rank per GPU (lower it, or set common.device: cpu)")
    if steering is not None and dataclasses.is_dataclass(steering) and \
            isinstance(getattr(steering, "vector", None), torch.Tensor):
        # saved for the ranks from the CPU: each moves it to its own device when steering
        steering = dataclasses.replace(steering, vector=steering.vector.detach().cpu())
    return collect_in_processes(tasks, processes=processes, out_dir=out_dir, collect=collect,
                                loader="ifl.models:load_llava",
                                loader_kwargs=_loader_kwargs(row, dtype, quantization),
                                steering=steering, device="cpu" if device == "cpu" else "auto",
                                threads=threads if device == "cpu" else None, machines=machines,
                                machine_rank=machine_rank, main_address=main_address,
                                main_port=main_port, wait_s=NODES_WAIT_S if machines > 1 else 0)


def sample_parallel_items(frame: pd.DataFrame, per_benchmark: int | None, seed: int) -> pd.DataFrame:
    """The rows of `frame` whose parallel item is among at most `per_benchmark` items drawn per
    benchmark with `seed` (benchmarks in sorted order, one generator), so the same items are kept
    in every language and condition. None keeps every row.

    >>> f = pd.DataFrame({"benchmark": ["a"] * 4, "parallel_id": ["p1", "p1", "p2", "p3"]})
    >>> sorted(sample_parallel_items(f, 2, seed=0)["parallel_id"].unique())
    ['p1', 'p3']
    """
    if per_benchmark is None:
        return frame
    rng, keep = np.random.default_rng(seed), []
    for _, part in frame.groupby("benchmark", sort=True):
        ids = np.array(sorted(part["parallel_id"].unique()))
        keep.extend(rng.permutation(ids)[:per_benchmark].tolist())
    return frame[frame["parallel_id"].isin(keep)]
