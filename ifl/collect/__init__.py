"""Collect the responses of notebook 03: every task with its image and with its description.

    collect_responses(...)         generate, resumably, one shard of the work (runner.py)
    load_responses(out_dir, name)  the stored rows of one model, deduplicated (store.py)
    merge_shards(out_dir, name)    all shards in one table and one file (store.py)
    shard_of(task_id, n)           which of n shards owns a task (store.py)
    collect_in_processes(...)      N processes per node via `accelerate launch`, merged (launch.py)
    Speedups(share_prefix=, static_cache=, compile=)   same rows, faster (options.py, prefix.py)

Files: engine.py (prompts, batching, generation; no I/O), store.py (part files, shards),
runner.py (the two together), launch.py + worker.py (many processes), synthetic.py (random-weight LLaVA from configs, for tests and
benchmarks/collect_throughput.py).
"""
from ifl.collect.runner import collect_responses
from ifl.collect.store import load_responses, merge_shards, shard_of

__all__ = ["collect_responses", "load_responses", "merge_shards", "shard_of"]
