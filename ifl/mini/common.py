"""Shared by the component builders: the finished-build cache and the learning-rate schedule.

A build directory is finished when its DONE file exists (written last) and holds the exact
settings the build was asked for; anything else (a killed build, other sizes) is rebuilt.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp()) / "m"
>>> is_done(d, {"steps": 1}), fresh_dir(d).is_dir(), mark_done(d, {"steps": 1}), is_done(d, {"steps": 1})
(False, True, None, True)
>>> is_done(d, {"steps": 2})
False
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

DONE = "DONE"


def is_done(out_dir: str | Path, settings: dict) -> bool:
    """True if `out_dir` holds a finished build made with exactly `settings` (JSON-equal)."""
    marker = Path(out_dir) / DONE
    return marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(settings))


def mark_done(out_dir: str | Path, settings: dict) -> None:
    """Write DONE (call it last: it declares everything else in `out_dir` complete)."""
    (Path(out_dir) / DONE).write_text(json.dumps(settings, indent=1, sort_keys=True))


def fresh_dir(out_dir: str | Path) -> Path:
    """Empty `out_dir` (an unfinished or differently configured build) and create it."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def lr_at(step: int, steps: int, lr: float, warmup: float = 0.05) -> float:
    """Linear warm-up over `warmup` of the steps, then cosine decay to lr / 10.

    >>> [round(lr_at(s, 100, 1.0), 2) for s in (0, 4, 5, 100)]
    [0.2, 1.0, 1.0, 0.1]
    """
    w = max(1, int(warmup * steps))
    if step < w:
        return lr * (step + 1) / w
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w))))
