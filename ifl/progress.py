"""The work's own progress, from inside a notebook's kernel to the terminal running `./run_all.sh`.

Inside the kernel, a long loop reports where it is, one line per step:

    progress.report("train vicuna-clip-en stage2", done=step + 1, total=n_steps)

`report` costs a dictionary update per call and writes the progress file (JSON, atomically) at
most every `WRITE_EVERY_S` seconds; without a runner (an interactive kernel) it does nothing.
Tasks nest like a stack: a task reported after another is shown inside it, and a task is done
when `done >= total` (reporting an outer task again also ends the tasks opened inside it).

The runner watches the file from a thread (`Board.watch`): on a terminal, one live line updated
in place; otherwise (a file, a CI log) one line every `every` seconds, so a long notebook is never
silent. `Board.summary` is the table printed when the run ends.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TextIO

from ifl.stage import STAGE_FILE, read_stage_record

PROGRESS_FILE_ENV = "IFL_PROGRESS_FILE"  # set by the runner for the kernel it starts
WRITE_EVERY_S = 0.5
SHOWN_LEVELS = 3  # innermost tasks shown on the line


# ---------------------------------------------------------------- kernel side: report
class _Reporter:
    def __init__(self) -> None:
        self.tasks: list[dict] = []  # a stack: outer task first
        self.last_write = 0.0
        self.path: str | None = None

    def report(self, step: str, done: int, total: int | None) -> None:
        path = os.environ.get(PROGRESS_FILE_ENV)
        # under `accelerate launch` every process runs the loop; the first one speaks for all
        if not path or os.environ.get("RANK", "0") != "0":
            return
        if path != self.path:  # another watch: what was open belongs to the last one
            self.path, self.tasks = path, []
        now = time.time()
        level = next((i for i, t in enumerate(self.tasks) if t["step"] == step), None)
        force = False
        if level is None or done < self.tasks[level]["done"]:  # new, or started over
            if level is not None:
                del self.tasks[level:]
            self.tasks.append({"step": step, "done0": done, "started": now})
            level, force = len(self.tasks) - 1, True
        elif level < len(self.tasks) - 1:  # the outer task moved on: the inner ones are over
            del self.tasks[level + 1:]
            force = True
        self.tasks[level].update(done=done, total=total, updated=now)
        if total is not None and done >= total:
            del self.tasks[level:]
            force = True
        if force or now - self.last_write >= WRITE_EVERY_S:
            self.last_write = now
            _write_atomic(Path(path), {"tasks": self.tasks, "written": now})


_REPORTER = _Reporter()


def report(step: str, done: int, total: int | None = None) -> None:
    """Tell the runner that `step` has done `done` of `total` units (steps, batches, texts)."""
    _REPORTER.report(step, int(done), None if total is None else int(total))


def _write_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # progress is a courtesy: never fail the work over it
        pass


# ---------------------------------------------------------------- runner side: render
def read_tasks(path: Path) -> list[dict]:
    """The tasks in a progress file; [] when it is absent or being replaced."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def duration(seconds: float) -> str:
    """Seconds as `42s`, `3m05s` or `1h02m`."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe(task: dict, now: float) -> str:
    """`train x stage2 120/400 30% ETA 1m05s` (ETA from this task's own rate so far)."""
    done, total = task.get("done", 0), task.get("total")
    if not total:
        return f"{task['step']} {done}"
    text = f"{task['step']} {done}/{total} {100 * done / total:.0f}%"
    ran, advanced = task.get("updated", now) - task["started"], done - task["done0"]
    if advanced > 0 and ran > 0:
        left = (total - done) * ran / advanced - (now - task.get("updated", now))
        text += f" ETA {duration(left)}"
    return text


def progress_line(notebook: str, elapsed: float, tasks: list[dict], now: float) -> str:
    parts = [describe(t, now) for t in tasks[-SHOWN_LEVELS:]]
    where = " > ".join(parts) if parts else "starting" if elapsed < 5 else "working"
    return f"[ifl] {notebook} {duration(elapsed)}: {where}"


@dataclass
class _Ran:
    name: str
    started: float
    seconds: float = 0.0


@dataclass
class Board:
    """Shows notebooks' progress on `stream` and keeps what ran for the closing summary.

    live (default: stream is a terminal): one line rewritten in place every `poll` seconds.
    Otherwise a line every `every` seconds, whether or not the work moved."""
    stream: TextIO
    every: float = 30.0
    live: bool | None = None
    poll: float = 0.5
    ran: list[_Ran] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.live is None:
            self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    @contextmanager
    def watch(self, notebook: str, progress_file: Path) -> Iterator[None]:
        """While the block runs (the notebook's kernel inherits the environment), render the
        progress the kernel writes to `progress_file`."""
        progress_file = Path(progress_file)
        progress_file.unlink(missing_ok=True)
        entry = _Ran(notebook, time.time())
        self.ran.append(entry)
        stop = threading.Event()
        thread = threading.Thread(target=self._render, args=(notebook, progress_file, entry, stop),
                                  name=f"progress {notebook}", daemon=True)
        previous = os.environ.get(PROGRESS_FILE_ENV)
        os.environ[PROGRESS_FILE_ENV] = str(progress_file)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            entry.seconds = time.time() - entry.started
            if previous is None:
                os.environ.pop(PROGRESS_FILE_ENV, None)
            else:
                os.environ[PROGRESS_FILE_ENV] = previous

    def _render(self, notebook: str, progress_file: Path, entry: _Ran, stop: threading.Event) -> None:
        next_line = entry.started + self.every
        shown = False
        while not stop.wait(self.poll if self.live else min(self.poll, self.every)):
            now = time.time()
            line = progress_line(notebook, now - entry.started, read_tasks(progress_file), now)
            if self.live:
                width = shutil.get_terminal_size((100, 20)).columns - 1
                self.stream.write("\r" + line[:width] + "\x1b[K")
                shown = True
            elif now >= next_line:
                self.stream.write(line + "\n")
                next_line = now + self.every
            self.stream.flush()
        if shown:  # leave a clean line for what the runner prints next
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def seconds(self, notebook: str) -> float:
        return next((r.seconds for r in reversed(self.ran) if r.name == notebook), 0.0)

    def summary(self, run_dir: Path, selected: list[str]) -> str:
        """A table: each selected notebook, whether it finished in this run, its time, headline."""
        rows = [("notebook", "status", "time", "headline")]
        for name in selected:
            ran = next((r for r in reversed(self.ran) if r.name == name), None)
            record = read_stage_record(run_dir, name)
            finished = ran is not None and record is not None and _finished_after(run_dir, name, ran)
            status = "done" if finished else "FAILED" if ran else "not run"
            rows.append((name, status, duration(ran.seconds) if ran else "-",
                         record["headline"] if finished else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        total = sum(r.seconds for r in self.ran)
        return "\n".join(["[ifl] summary", *lines, f"total {duration(total)}"])


def done_line(notebook: str, seconds: float, run_dir: Path) -> str:
    """The line printed when a notebook ends well: its time and its headline result."""
    record = read_stage_record(run_dir, notebook) or {}
    return f"[ifl] {notebook}: done in {duration(seconds)}: {record.get('headline', '')}"


def _finished_after(run_dir: Path, name: str, ran: _Ran) -> bool:
    """stage.json written during this run (a notebook failing before it opens its stage leaves
    an older stage.json in place)."""
    try:
        return (run_dir / name / STAGE_FILE).stat().st_mtime >= ran.started - 1
    except OSError:
        return False


def kernel_options() -> dict:
    """papermill keyword arguments that start the kernel with encrypted channels. ipykernel 7
    warns "Kernel is running over TCP without encryption" on every start unless the kernel
    manager provisions CurveZMQ keys, which jupyter_client (8.10 here) does under
    `transport_encryption="auto"` for kernelspecs declaring `supported_encryption: curve`
    (`ipykernel install` writes that). An older jupyter_client, or pyzmq without libsodium
    (no Curve): the default stays, and so does the warning."""
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    if not zmq.has("curve") or "transport_encryption" not in KernelManager.class_trait_names():
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}
