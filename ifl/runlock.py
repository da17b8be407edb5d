"""One run at a time per run folder: a lock file `runs/<run>/.lock` holding the owner's pid.

Two `./run_all.sh` on the same run name would redo the same work and write the same part
files. The exception is a collection on several nodes (`machines` > 1 in 03_collect_responses
or 07_steering): each node runs the notebook on the shared run folder, and node r > 0 holds
its own lock (`machine_lock_name`). The lock is created atomically (O_EXCL), removed when the runner exits (also on an error
or Ctrl-C), and a lock left by a crashed or killed runner is stale when its pid no longer runs:
the next run takes it over, saying so.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> with run_lock(folder):
...     (folder / LOCK_FILE).exists()
True
>>> (folder / LOCK_FILE).exists()
False
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live runner holds this run folder; the message names its pid and start time."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # half-written or unreadable: treated as stale below


def acquire(run_dir: Path, name: str = LOCK_FILE) -> Path:
    """Take the lock `name` of `run_dir` (created if needed) or raise RunLockedError."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    for _ in range(3):  # a stale lock removed by us or by a racing runner: try again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            pid = owner.get("pid")
            other_host = owner.get("host") not in (None, record["host"])
            if isinstance(pid, int) and (other_host or _alive(pid)):
                where = f" on {owner['host']}" if other_host else ""
                raise RunLockedError(
                    f"run folder {run_dir} is in use by another run: pid {pid}{where}, started "
                    f"{owner.get('started', '?')} ({owner.get('command', '?')}). Wait for it, stop "
                    f"it, or choose another run name (-p common.run_name=...). If that process is "
                    f"gone, delete {path}.") from None
            print(f"[ifl] removing a stale lock of run folder {run_dir} (pid {pid} started "
                  f"{owner.get('started', '?')} is no longer running)", file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return path
    raise RunLockedError(f"could not take the lock {path}: other runs keep taking it")


def machine_lock_name(machine_rank: int) -> str:
    """The lock of node `machine_rank` of a multi-node collection: node 0 holds the run's own
    lock (so no second ordinary run starts beside it), node r > 0 `.lock-machine-<r>`.

    >>> machine_lock_name(0), machine_lock_name(1)
    ('.lock', '.lock-machine-1')
    """
    return LOCK_FILE if machine_rank == 0 else f"{LOCK_FILE}-machine-{machine_rank}"


def release(path: Path) -> None:
    """Remove the lock if it is still ours."""
    if _read(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: Path, name: str = LOCK_FILE) -> Iterator[Path]:
    """Hold the lock of `run_dir` for the body (released on any exit but SIGKILL, after which
    the next run finds the pid gone). `name`: another lock of the same folder (a multi-node
    collection's other nodes each hold their own, `machine_lock_name`)."""
    path = acquire(run_dir, name)
    try:
        yield path
    finally:
        release(path)
