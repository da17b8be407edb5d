"""Run the numbered notebooks headlessly with a params file: `./run_all.sh [PARAMS] [options]`.

    ./run_all.sh                                   # params/default.yaml, every notebook
    ./run_all.sh params/paper.yaml --only 05       # one section, from saved outputs
    ./run_all.sh params/default.yaml --from 03 -p common.seed=1

Params are validated before any work (exit 2 with a message naming file, section and key).
Each notebook (jupytext percent `.py` in notebooks/) is converted in memory and executed by
papermill in this process (a kernel start is ~1 s; the papermill/jupytext command-line tools
would cost ~6 s each). Executed notebooks go to rendered/<run>/ as .ipynb and .html, cell outputs
to runs/<run>/logs/, and rendered/<run>/index.html links it all. A failing notebook stops the
run with exit 1, naming the failing cell and the rendered notebook; what earlier notebooks wrote
stays. A full disk or an unwritable file fails the same way, in one line naming the notebook and
the file. Ctrl-C stops the run with one line naming the interrupted notebook and the command
that resumes it (exit 130); finished work is kept. One run at a time per run name: the runner
holds `runs/<run>/.lock` while it works (ifl/runlock.py). `--check` validates the params, says
what would run and which hub downloads are missing (ifl/precheck.py), and does no work.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ifl.params import (ParamsError, check_files, defaulted_blocks, dump, load_params,
                        notebook_parameters)
from ifl.params_schema import Params, section
from ifl.progress import Board, done_line, kernel_options
from ifl.runlock import RunLockedError, machine_lock_name, run_lock
from ifl.stage import STAGE_FILE, pipeline, prerequisites, write_text_atomic

NOTEBOOK_DIR = Path("notebooks")
KERNEL = "ifl"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    root = Path.cwd()
    try:
        params = load_params(args.params, overrides=args.p)
        selected = select_notebooks(available_notebooks(root), only=args.only, start=args.start)
        _check_prerequisites(params, selected, root)
        if args.check:
            from ifl.precheck import check_report
            return check_report(params, selected, root, source=str(args.params))
        if params.common.make_smoke_assets:
            from ifl.smoke import ensure_smoke_assets
            ensure_smoke_assets(root / "smoke_assets")
        check_files(params, source=str(args.params), root=root, sections=["common", *selected])
        run_dir, rendered = _layout(params, root)
        check_writable(params, root)
        node = machine_rank(params, selected)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if node:  # a multi-node collection's other node: its own lock and rendered notebooks
            rendered = rendered / f"machine-{node}"
        with run_lock(run_dir, machine_lock_name(node)):
            return _run(params, selected, args, root, run_dir, rendered)
    except RunLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(params: Params, selected: list[str], args: argparse.Namespace, root: Path,
         run_dir: Path, rendered: Path) -> int:
    """Run the selected notebooks in order; write the companion for whatever finished."""
    try:
        write_text_atomic(run_dir / "params.yaml", f"# resolved from {args.params}\n{dump(params, args.p)}")
    except OSError as exc:  # a full disk before the first notebook: one line, nothing run
        print(f"[ifl] run '{params.common.run_name}' not started: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"[ifl] run '{params.common.run_name}' ({params.common.world}) from {args.params}: "
          f"{', '.join(selected)}", file=sys.stderr)
    if defaulted := [b for b in defaulted_blocks(params) if b in selected]:
        print(f"[ifl] not in {args.params}, so the schema's defaults (ifl/params_schema.py): "
              f"{', '.join(defaulted)}; each value's origin is in {run_dir / 'params.yaml'}",
              file=sys.stderr)
    status, current = 0, None
    board = Board(sys.stderr, every=args.progress_every)
    try:
        for name in selected:
            current = name
            if not run_notebook(name, params, root, run_dir, rendered, overrides=args.p,
                                board=board):
                status = 1
                break
        current = None
    except KeyboardInterrupt:
        status = 130
        print(f"[ifl] interrupted during {current}: the notebooks finished before it and what "
              f"{current} saved so far are kept; resume with: {resume_command(args, selected, current)}",
              file=sys.stderr)
    try:
        from ifl.companion import write_index  # heavy imports only once params are good
        index = write_index(params, root, params_file=str(args.params))
        print(f"{board.summary(run_dir, selected)}\n[ifl] companion: {index}", file=sys.stderr)
    except (OSError, KeyboardInterrupt) as exc:
        print(f"[ifl] companion page not written: {_one_line(exc)}", file=sys.stderr)
    return status


def resume_command(args: argparse.Namespace, selected: list[str], current: str) -> str:
    """The command that reruns `current` and every selected notebook after it."""
    rest = [n.split("_", 1)[0] for n in selected[selected.index(current):]]
    parts = ["./run_all.sh", str(args.params)]
    parts += ["--only", ",".join(rest)] if args.only else ["--from", rest[0]]
    parts += [f"-p {shlex.quote(o)}" for o in args.p]
    return " ".join(parts)


def check_writable(params: Params, root: Path) -> None:
    """Create the run's folders and a probe file in each, or raise ParamsError naming the
    folder (a read-only or missing output_root stops the run before any work)."""
    base = root / params.common.output_root
    run = params.common.run_name
    for folder in (base / "runs" / run, base / "rendered" / run, base / "paper_figures" / run):
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ParamsError(f"common.output_root {params.common.output_root!r}: cannot write "
                              f"{folder}: {exc.strerror or exc}. Choose a writable output_root "
                              "(-p common.output_root=DIR).") from None


STOPS_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # disk full, quota, read-only
_ERRNO = re.compile(r"\[Errno (\d+)\]", re.IGNORECASE)  # pyarrow also words it "[errno 28]"
_FILENAME = re.compile(r""": (?:'([^']+)'|"([^"]+)")$""")  # how OSError ends when it names its file
_CELL_LINE = re.compile(r"^-+> *\d+ (.+)$", re.MULTILINE)  # the cell's failing line, in the traceback
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _disk_full(failure) -> str | None:
    """'No space left on device writing FILE' for a cell that failed with a full disk, a full
    quota or a read-only file system (by the error's errno, whichever exception carried it);
    else None. FILE is the file the error names (every write through `ifl.stage.atomic_path`
    names it), or else the cell's line that was writing."""
    evalue = str(failure.evalue).strip()
    code = _ERRNO.search(evalue)
    if code is None or int(code.group(1)) not in STOPS_WRITING:
        return None
    named = _FILENAME.search(evalue)
    return f"{os.strerror(int(code.group(1)))} writing {_written(named, failure.traceback)}"


def _written(named: re.Match | None, traceback: list[str]) -> str:
    """The file an OSError names, or the cell's failing line from its (coloured) traceback."""
    if named:
        return named.group(1) or named.group(2)
    lines = _CELL_LINE.findall(_ANSI.sub("", "\n".join(traceback)))
    return f"a file the error does not name, in `{lines[0].strip()}`" if lines else \
        "a file the error does not name (see the log)"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot write {exc.filename}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def available_notebooks(root: Path) -> list[str]:
    """Names of the pipeline notebooks present in notebooks/, in pipeline order."""
    present = {p.stem for p in (root / NOTEBOOK_DIR).glob("[0-9][0-9]_*.py")}
    return [row["name"] for row in pipeline() if row["name"] in present]


def select_notebooks(names: list[str], *, only: str | None, start: str | None) -> list[str]:
    """Apply --only NN[,NN] and --from NN to the available notebooks."""
    numbers = {n.split("_", 1)[0]: n for n in names}
    if only:
        wanted = [w.strip().zfill(2) for w in only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in numbers]
        if unknown:
            raise ParamsError(f"--only {only}: no notebook numbered {', '.join(unknown)} "
                              f"(have {', '.join(numbers)})")
        names = [numbers[w] for w in sorted(wanted)]
    if start:
        first = start.strip().zfill(2)
        if first not in numbers:
            raise ParamsError(f"--from {start}: no notebook numbered {first} (have {', '.join(numbers)})")
        names = [n for n in names if n.split("_", 1)[0] >= first]
    if not names:
        raise ParamsError("no notebook selected")
    return names


def run_notebook(name: str, params: Params, root: Path, run_dir: Path, rendered: Path,
                 overrides: list[str] | tuple[str, ...] = (), board: Board | None = None) -> bool:
    """Execute one notebook; write .ipynb, .html and the log. True on success. Raises
    KeyboardInterrupt when interrupted (in the runner or, by the same Ctrl-C, in the kernel)."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ifl.companion import export_html
    from ifl.kernel_io import logged_kernel_manager

    nb = jupytext.read(root / NOTEBOOK_DIR / f"{name}.py")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python (ifl)", "language": "python"}
    out_ipynb = rendered / f"{name}.ipynb"
    out_ipynb.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    pm_logger = logging.getLogger("papermill")
    pm_logger.addHandler(handler)
    pm_logger.setLevel(logging.INFO)
    pm_logger.propagate = False  # cell outputs go to the log file, not the console

    started = time.time()
    print(f"[ifl] {name}: running (log: {log_path})", file=sys.stderr)
    failure = None
    board = board or Board(sys.stderr)
    try:
        write_text_atomic(run_dir / name / "params.yaml", dump(params, overrides))
        with _quiet_kernel_shutdown(), board.watch(name, log_path.with_suffix(".progress.json")):
            papermill.execute_notebook(nb, str(out_ipynb), parameters=notebook_parameters(params, name),
                                       kernel_name=KERNEL, cwd=str(root), log_output=True,
                                       progress_bar=False,  # the work's own progress is shown
                                       kernel_manager_class=logged_kernel_manager(log_path),
                                       **kernel_options())
    except PapermillExecutionError as exc:
        failure = exc
    except OSError as exc:  # the runner's own writes (rendered notebook, log): disk full, read-only
        print(f"[ifl] {name} FAILED: {_one_line(exc)} (log: {log_path})", file=sys.stderr)
        return False
    finally:
        pm_logger.removeHandler(handler)
        handler.close()
    if failure is not None and failure.ename == "KeyboardInterrupt":
        raise KeyboardInterrupt  # Ctrl-C reached the kernel too: one message, from main
    try:
        html = export_html(out_ipynb)
    except OSError as exc:
        html = f"(no HTML: {_one_line(exc)})"
    seconds = time.time() - started
    if failure is not None and (full := _disk_full(failure)):
        print(f"[ifl] {name} FAILED after {seconds:.1f} s: {full} (cell In [{failure.exec_count}]); "
              f"what it saved before stays. Notebook: {html}; log: {log_path}", file=sys.stderr)
        return False
    if failure is not None:
        cell_source = _cell_source(out_ipynb, failure.exec_count)
        report = (f"[ifl] {name} FAILED after {seconds:.1f} s in cell In [{failure.exec_count}]:\n"
                  f"{cell_source}\n{failure.ename}: {failure.evalue}\n")
        try:
            with log_path.open("a", encoding="utf-8") as log:
                log.write(report + "".join(failure.traceback) + "\n")
        except OSError:
            pass  # the console line below still says what failed
        print(f"{report}rendered notebook: {out_ipynb} and {html}\nlog: {log_path}", file=sys.stderr)
        return False
    if not (run_dir / name / STAGE_FILE).exists():
        print(f"[ifl] {name} ran but did not call stage.finish(); treating as failed ({html})",
              file=sys.stderr)
        return False
    print(f"{done_line(name, seconds, run_dir)} -> {html}", file=sys.stderr)
    return True


@contextmanager
def _quiet_kernel_shutdown():
    """On Ctrl-C, papermill's kernel teardown logs zmq errors ("Socket operation on
    non-socket") from a half-closed channel: silence those loggers while it unwinds."""
    try:
        yield
    except KeyboardInterrupt:
        for logger in ("traitlets", "asyncio", "jupyter_client", "nbclient", "papermill"):
            logging.getLogger(logger).disabled = True
        raise


def _check_prerequisites(params: Params, selected: list[str], root: Path) -> None:
    """A selected notebook whose inputs (ifl/artifacts.csv) are neither selected before it nor
    saved: stop now."""
    run_dir, _ = _layout(params, root)
    for name in selected:
        for req_name in prerequisites(name):
            will_run = req_name in selected and selected.index(req_name) < selected.index(name)
            done_mark = run_dir / req_name / STAGE_FILE
            if not will_run and not done_mark.exists():
                req = req_name.split("_", 1)[0]
                why = (f"{done_mark} is missing (it is written when {req_name} finishes)"
                       if done_mark.parent.is_dir() else f"{done_mark.parent} does not exist")
                raise ParamsError(
                    f"notebook {name} needs the outputs of {req_name}: {why}; "
                    f"run it first: ./run_all.sh <params> --only {req} (or use --from {req})")


COLLECTING = ("03_collect_responses", "07_steering")  # the blocks with multi-node keys


def machine_rank(params: Params, selected: list[str]) -> int:
    """This node's rank in a multi-node collection of the selected notebooks (0: the main node,
    or not multi-node). The selected collecting notebooks must agree on it."""
    blocks = {name: section(params, name) for name in COLLECTING if name in selected}
    ranks = {b.machine_rank for b in blocks.values() if b.machines > 1}
    if len(ranks) > 1:
        raise ParamsError("the selected notebooks collect on several nodes with different ranks ("
                          + ", ".join(f"{name}.machine_rank={b.machine_rank}"
                                      for name, b in blocks.items())
                          + "): a node has one rank; run them separately (--only)")
    return ranks.pop() if ranks else 0


def _layout(params: Params, root: Path) -> tuple[Path, Path]:
    base = root / params.common.output_root
    return base / "runs" / params.common.run_name, base / "rendered" / params.common.run_name


def _cell_source(ipynb: Path, exec_count: int) -> str:
    """Source of the cell that ran as In [exec_count] (papermill shifts cell indices by adding
    an injected-parameters cell and an error banner, so the count is the reliable key)."""
    import nbformat
    try:
        cells = nbformat.read(ipynb, as_version=4).cells
    except OSError:
        return ""
    matches = [c for c in cells if c.cell_type == "code" and c.get("execution_count") == exec_count]
    if not matches:
        return ""
    cell = matches[0]
    lines = cell.source.splitlines()
    return "\n".join("    " + line for line in lines[:20]) + ("\n    ..." if len(lines) > 20 else "")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_all.sh", description="Run the ifl notebooks headlessly with a params file.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    parser.add_argument("params", nargs="?", default="params/default.yaml",
                        help="params file (default: params/default.yaml, the miniature world)")
    parser.add_argument("--only", metavar="NN[,NN]", help="run only these notebooks")
    parser.add_argument("--from", dest="start", metavar="NN", help="run from this notebook on")
    parser.add_argument("-p", action="append", default=[], metavar="section.key=value",
                        help="override one param (repeatable), validated like the file")
    parser.add_argument("--check", action="store_true",
                        help="validate the params, print what would run and which hub models and "
                             "datasets are missing from the local cache (with the download "
                             "commands); do no work. Exit 0 = params valid, 2 = not")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="when output is not a terminal, a progress line this often (default 30)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
