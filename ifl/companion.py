"""The rendered companion: executed notebooks as HTML and an index page linking every section.

`rendered/<run>/index.html` lists each stage of the pipeline with the part of the paper it
reproduces, its headline result (from the stage's `stage.json`), and links to the rendered
notebook and the figures. Stages not run yet are listed as such, so the page is never stale.
"""
from __future__ import annotations

import html
import subprocess
import time
from pathlib import Path

from ifl.params_schema import Params
from ifl.stage import outputs, pipeline, read_stage_record

PAPER = ('Hinck et al. (2024), "Why do LLaVA Vision-Language Models Reply to Images in English?", '
         'Findings of EMNLP 2024')


def export_html(ipynb: Path) -> Path:
    """Render an executed notebook to HTML beside it (images are embedded in the notebook)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
    out = ipynb.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def write_index(params: Params, root: Path, *, params_file: str) -> Path:
    """Write rendered/<run>/index.html from what the run has produced so far."""
    base = root / params.common.output_root
    run = params.common.run_name
    run_dir, rendered, figures = base / "runs" / run, base / "rendered" / run, base / "paper_figures" / run
    rendered.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in pipeline():
        record = read_stage_record(run_dir, stage["name"])
        notebook = rendered / f"{stage['name']}.html"
        if record:
            result = html.escape(record["headline"])
            links = (f'<a href="{notebook.name}">notebook</a> · '
                     f'<a href="{stage["name"]}.ipynb">.ipynb</a>' + _output_links(run_dir, stage["name"], rendered))
        elif notebook.exists():
            result, links = "<em>failed: see the notebook</em>", f'<a href="{notebook.name}">notebook</a>'
        elif (root / "notebooks" / f"{stage['name']}.py").exists():
            result, links = "<em>not run in this run</em>", ""
        else:
            result, links = "<em>notebook not written yet</em>", ""
        rows.append(f"<tr><td>{stage['number']}</td><td><b>{html.escape(stage['title'])}</b><br>"
                    f"<small>{html.escape(stage['paper'])}</small></td>"
                    f"<td>{html.escape(stage['reproduces'])}</td><td>{result}</td><td>{links}</td></tr>")
    figure_links = "".join(
        f'<li><a href="{_relative(p, rendered)}">{html.escape(p.stem)}</a> '
        f'(<a href="{_relative(p.with_suffix(".pdf"), rendered)}">pdf</a>)</li>'
        for p in sorted(figures.glob("*.png")))
    page = _PAGE.format(
        paper=html.escape(PAPER), run=html.escape(run), world=params.common.world,
        params_file=html.escape(params_file), commit=_git_commit(root),
        when=time.strftime("%Y-%m-%d %H:%M"), rows="\n".join(rows),
        figures=figure_links or "<li>none yet</li>")
    index = rendered / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _output_links(run_dir: Path, name: str, rendered: Path) -> str:
    """Links to the data files stage `name` declares (ifl/artifacts.csv) and has written."""
    files = [run_dir / name / f for f in outputs(name).values() if (run_dir / name / f).is_file()]
    return "".join(f'<br><small><a href="{_relative(f, rendered)}">{html.escape(f.name)}</a></small>'
                   for f in files)


def _relative(path: Path, start: Path) -> str:
    import os
    return os.path.relpath(path, start).replace(os.sep, "/")


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ifl companion: {run}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .5rem; vertical-align: top; text-align: left; }}
small {{ color: #666; }}
</style></head><body>
<h1>Companion to the paper, run <code>{run}</code></h1>
<p>{paper}.</p>
<p>World: <b>{world}</b> · params: <code>{params_file}</code> (resolved copy in
<code>runs/{run}/params.yaml</code>) · code: <code>{commit}</code> · written {when}.</p>
<p>The miniature world is a testbed that runs every step of the paper at toy scale on CPU;
its numbers are about the miniature models, not evidence about the real ones.</p>
<table><tr><th>#</th><th>section</th><th>reproduces</th><th>headline result (this run)</th><th></th></tr>
{rows}
</table>
<h2>Figures</h2><ul>{figures}</ul>
</body></html>
"""
