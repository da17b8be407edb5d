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
stays.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ifl.params import ParamsError, check_files, dump, load_params, notebook_parameters
from ifl.params_schema import Params
from ifl.progress import Board, done_line, kernel_options
from ifl.stage import STAGE_FILE, pipeline

NOTEBOOK_DIR = Path("notebooks")
KERNEL = "ifl"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    root = Path.cwd()
    try:
        params = load_params(args.params, overrides=args.p)
        selected = select_notebooks(available_notebooks(root), only=args.only, start=args.start)
        _check_prerequisites(params, selected, root)
        if params.common.make_smoke_assets:
            from ifl.smoke import ensure_smoke_assets
            ensure_smoke_assets(root / "smoke_assets")
        check_files(params, source=str(args.params), root=root, sections=["common", *selected])
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    run_dir, rendered = _layout(params, root)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.yaml").write_text(f"# resolved from {args.params}\n{dump(params)}")
    print(f"[ifl] run '{params.common.run_name}' ({params.common.world}) from {args.params}: "
          f"{', '.join(selected)}", file=sys.stderr)

    from ifl.companion import write_index  # heavy imports only once params are good
    status = 0
    board = Board(sys.stderr, every=args.progress_every)
    for name in selected:
        ok = run_notebook(name, params, root, run_dir, rendered, board=board)
        if not ok:
            status = 1
            break
    index = write_index(params, root, params_file=str(args.params))
    print(f"{board.summary(run_dir, selected)}\n[ifl] companion: {index}", file=sys.stderr)
    return status


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
                 board: Board | None = None) -> bool:
    """Execute one notebook; write .ipynb, .html and the log. True on success."""
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from ifl.companion import export_html

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

    stage_params = run_dir / name / "params.yaml"
    stage_params.parent.mkdir(parents=True, exist_ok=True)
    stage_params.write_text(dump(params))

    started = time.time()
    print(f"[ifl] {name}: running (log: {log_path})", file=sys.stderr)
    failure = None
    board = board or Board(sys.stderr)
    try:
        with board.watch(name, log_path.with_suffix(".progress.json")):  # the work's own progress
            papermill.execute_notebook(nb, str(out_ipynb), parameters=notebook_parameters(params, name),
                                       kernel_name=KERNEL, cwd=str(root), log_output=True,
                                       progress_bar=False, **kernel_options())
    except PapermillExecutionError as exc:
        failure = exc
    finally:
        pm_logger.removeHandler(handler)
        handler.close()
    html = export_html(out_ipynb)
    seconds = time.time() - started
    if failure is not None:
        cell_source = _cell_source(out_ipynb, failure.exec_count)
        report = (f"[ifl] {name} FAILED after {seconds:.1f} s in cell In [{failure.exec_count}]:\n"
                  f"{cell_source}\n{failure.ename}: {failure.evalue}\n")
        with log_path.open("a", encoding="utf-8") as log:
            log.write(report + "".join(failure.traceback) + "\n")
        print(f"{report}rendered notebook: {out_ipynb} and {html}\nlog: {log_path}", file=sys.stderr)
        return False
    if not (run_dir / name / STAGE_FILE).exists():
        print(f"[ifl] {name} ran but did not call stage.finish(); treating as failed ({html})",
              file=sys.stderr)
        return False
    print(f"{done_line(name, seconds, run_dir)} -> {html}", file=sys.stderr)
    return True


def _check_prerequisites(params: Params, selected: list[str], root: Path) -> None:
    """A selected notebook whose inputs are neither selected before it nor saved: stop now."""
    run_dir, _ = _layout(params, root)
    by_number = {row["number"]: row for row in pipeline()}
    for name in selected:
        number = name.split("_", 1)[0]
        for req in by_number[number]["requires"].split():
            req_name = by_number[req]["name"]
            will_run = req_name in selected and selected.index(req_name) < selected.index(name)
            if not will_run and not (run_dir / req_name / STAGE_FILE).exists():
                raise ParamsError(
                    f"notebook {name} needs the outputs of {req_name}, which are not in {run_dir}; "
                    f"run it first: ./run_all.sh <params> --only {req} (or use --from {req})")


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
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="when output is not a terminal, a progress line this often (default 30)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
