"""How `collect_responses` may compute faster without changing a single greedy token.

    Speedups(share_prefix=True)                  the image prefix once per image (prefix.py)
    Speedups(static_cache=True, compile=True)    fixed-shape KV cache, compiled decode step

None of them changes the rows (greedy outputs are identical, tests/test_collect_fast.py), so
they are not part of a run's settings.json: a run may resume with other speedups.
`compile` needs `static_cache` (torch.compile needs fixed shapes) and pays a compilation per
new batch shape: it pays off on a GPU with many batches of one size, not on a short CPU run
(benchmarks/collect_throughput.py measures both).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Speedups:
    share_prefix: bool = False
    static_cache: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.compile and not self.static_cache:
            raise ValueError("Speedups(compile=True) needs static_cache=True: the compiled decode "
                             "step runs on a fixed-shape (static) KV cache")

    @classmethod
    def of(cls, value) -> "Speedups":
        """From a Speedups, None, a dict (params YAML), or a list of names (["share_prefix"])."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"unknown speedups {sorted(unknown)}; known: "
                                 f"{sorted(cls.__dataclass_fields__)}")
            return cls(**value)
        return cls.of({name: True for name in value})

    def __str__(self) -> str:
        on = [name for name in self.__dataclass_fields__ if getattr(self, name)]
        return "+".join(on) or "plain"
