"""The rendered companion: executed notebooks as HTML and an index page linking every section.

`rendered/<run>/index.html` lists each stage of the pipeline with the part of the paper it
reproduces, its headline result (from the stage's `stage.json`), its figures and links to the
rendered notebook; above them, the findings table (`runs/<run>/findings.csv`: the paper's value
beside this run's). Stages not run yet are listed as such, so the page is never stale.

The page is one offline HTML file: no scripts, no web fonts, no remote address. Its thumbnails
are embedded (base64 PNGs, downscaled), so the page shows the figures even when it is opened
or sent on its own; the full-size PNG/PDF and the notebooks are relative links that resolve
inside the run's output tree (rendered/, paper_figures/ side by side).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import subprocess
import time
from pathlib import Path

from ifl.params_schema import Params
from ifl.stage import atomic_path, outputs, pipeline, read_stage_record

FINDINGS = "findings.csv"  # runs/<run>/findings.csv, written by the notebooks that test a finding
FINDING_COLUMNS = ("finding", "paper", "run", "ci_low", "ci_high", "agrees")
THUMBNAIL_PX = 480  # longest side of an embedded thumbnail: readable, ~20-60 kB each
_AGREES = {"true": "✓ yes", "1": "✓ yes", "yes": "✓ yes",
           "false": "✗ no", "0": "✗ no", "no": "✗ no", "": ""}
PAPER = ('Hinck et al. (2024), "Why do LLaVA Vision-Language Models Reply to Images in English?", '
         'Findings of EMNLP 2024')


def export_html(ipynb: Path) -> Path:
    """Render an executed notebook to HTML beside it (images are embedded in the notebook)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
    out = ipynb.with_suffix(".html")
    with atomic_path(out) as tmp:  # a full disk leaves no half page
        tmp.write_text(body, encoding="utf-8")
    return out


def write_index(params: Params, root: Path, *, params_file: str) -> Path:
    """Write rendered/<run>/index.html from what the run has produced so far."""
    base = root / params.common.output_root
    run = params.common.run_name
    run_dir, rendered, figures = base / "runs" / run, base / "rendered" / run, base / "paper_figures" / run
    rendered.mkdir(parents=True, exist_ok=True)
    pngs = sorted(figures.glob("*.png"))
    rows, shown = [], set()
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
        own = [p for p in pngs if p.name.startswith(f"{stage['number']}_")]
        shown.update(own)
        thumbs = "".join(_thumbnail(p, rendered) for p in own)
        rows.append(f"<tr><td>{stage['number']}</td><td><b>{html.escape(stage['title'])}</b><br>"
                    f"<small>{html.escape(stage['paper'])}</small></td>"
                    f"<td>{html.escape(stage['reproduces'])}</td><td>{result}</td><td>{links}</td></tr>")
        if thumbs:  # the section's figures, side by side under its row
            rows.append(f"<tr class=figrow><td></td><td colspan=4><div class=figs>{thumbs}</div></td></tr>")
    others = "".join(_thumbnail(p, rendered) for p in pngs if p not in shown)
    page = _PAGE.format(
        paper=html.escape(PAPER), run=html.escape(run), world=params.common.world,
        params_file=html.escape(params_file), commit=_git_commit(root),
        when=time.strftime("%Y-%m-%d %H:%M"), rows="\n".join(rows),
        findings=findings_table(run_dir / FINDINGS),
        others=f"<h2>Other figures</h2><div class=figs>{others}</div>" if others else "")
    index = rendered / "index.html"
    with atomic_path(index) as tmp:  # a full disk leaves the previous page, not half of one
        tmp.write_text(page, encoding="utf-8")
    return index


def _output_links(run_dir: Path, name: str, rendered: Path) -> str:
    """Links to the data files stage `name` declares (ifl/artifacts.csv) and has written; a
    declared pattern (`*/report.html`: one per audited model) links every file it matches."""
    folder = run_dir / name
    files = [p for f in outputs(name).values()
             for p in (sorted(folder.glob(f)) if "*" in f else [folder / f]) if p.is_file()]
    return "".join(f'<br><small><a href="{_relative(f, rendered)}">'
                   f'{html.escape(f.relative_to(folder).as_posix())}</a></small>' for f in files)

def findings_table(path: Path) -> str:
    """The paper's value beside this run's, one row per finding of `findings.csv` (columns
    finding, paper, run, ci_low, ci_high, agrees); a note instead when the file is absent or
    lacks a column (the page is written at the end of every run, so it must not fail)."""
    if not path.exists():
        return ("<p><small>No findings table in this run yet "
                f"(<code>runs/{html.escape(path.parent.name)}/{FINDINGS}</code>).</small></p>")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FINDING_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            return (f"<p><b>{html.escape(str(path))}</b> lacks the column(s) "
                    f"{html.escape(', '.join(missing))}; it needs {', '.join(FINDING_COLUMNS)}.</p>")
        records = list(reader)
    rows = []
    for r in records:
        interval = (f"[{_number(r['ci_low'])}, {_number(r['ci_high'])}]"
                    if r["ci_low"].strip() or r["ci_high"].strip() else "")
        verdict = _AGREES.get(r["agrees"].strip().lower(), html.escape(r["agrees"]))
        note = (r.get("note") or "").strip()  # optional column: what was measured, or why not
        finding = html.escape(r["finding"]) + (f"<br><small>{html.escape(note)}</small>" if note else "")
        rows.append(f"<tr><td>{finding}</td><td>{_number(r['paper'])}</td>"
                    f"<td>{_number(r['run'])}</td><td>{interval}</td><td>{verdict}</td></tr>")
    return ("<table class=findings><tr><th>finding</th><th>paper</th><th>this run</th>"
            "<th>95% interval</th><th>agrees</th></tr>" + "".join(rows) + "</table>")


def _number(text: str) -> str:
    """A number with 3 significant digits; anything else as written."""
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return html.escape(text)


def _thumbnail(png: Path, rendered: Path) -> str:
    """A small copy of the figure embedded in the page (it shows wherever the page is opened),
    linking to the full PNG and the PDF beside it (relative: they resolve in the output tree)."""
    pdf = png.with_suffix(".pdf")
    pdf_link = f' · <a href="{_relative(pdf, rendered)}">pdf</a>' if pdf.exists() else ""
    return (f'<figure><a href="{_relative(png, rendered)}"><img src="{_thumbnail_data(png)}" '
            f'alt="{html.escape(png.stem)}"></a><figcaption>{html.escape(png.stem)}'
            f'{pdf_link}</figcaption></figure>')


def _thumbnail_data(png: Path) -> str:
    from PIL import Image

    with Image.open(png) as image:
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
.figs {{ display: flex; flex-wrap: wrap; gap: .75rem; margin-top: .5rem; }}
figure {{ margin: 0; }}
tr.figrow td {{ padding-top: 0; }}
tr:has(+ tr.figrow) td {{ border-bottom: none; }}
figure img {{ max-width: 16rem; max-height: 12rem; border: 1px solid #ddd; display: block; }}
figcaption {{ font-size: .8rem; color: #444; }}
.findings td:nth-child(n+2) {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head><body>
<h1>Companion to the paper, run <code>{run}</code></h1>
<p>{paper}.</p>
<p>World: <b>{world}</b> · params: <code>{params_file}</code> (resolved copy in
<code>runs/{run}/params.yaml</code>) · code: <code>{commit}</code> · written {when}.</p>
<p>The miniature world is a testbed that runs every step of the paper at toy scale on CPU;
its numbers are about the miniature models, not evidence about the real ones.</p>
<h2>Findings: the paper beside this run</h2>
{findings}
<h2>Sections</h2>
<p><small>Figures are thumbnails embedded in this page; click one for the full PNG
(files in <code>paper_figures/{run}/</code>).</small></p>
<table><tr><th>#</th><th>section</th><th>reproduces</th><th>headline result (this run)</th><th></th></tr>
{rows}
</table>
{others}
</body></html>
"""
