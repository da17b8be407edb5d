"""Write a stand-in folder atomically: build it in a temporary sibling, then rename it into place,
so a killed build never leaves a folder that looks finished."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on an empty temporary folder beside `target`, then rename it to `target`
    (replacing a half-written folder an older, killed build may have left)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
