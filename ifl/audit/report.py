"""report.html: one self-contained page (figure and example images inline as base64)."""
from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd

from ifl.audit.generate import STEERED


def _figure(table: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = [c for c in ("image", "text", STEERED) if f"fidelity_{c}" in table]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(table), 3))
    width = 0.8 / len(conds)
    for k, c in enumerate(conds):
        ax.bar([i + k * width for i in range(len(table))], table[f"fidelity_{c}"], width, label=c)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(table))], table["lang"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("fidelity (language ID)")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _thumb(data: bytes) -> str:
    from PIL import Image

    img = Image.open(io.BytesIO(bytes(data))).convert("RGB")
    img.thumbnail((96, 96))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_report(path, *, model_name: str, settings: dict, table: pd.DataFrame,
                 ifl_table: pd.DataFrame, scored: pd.DataFrame, tasks: pd.DataFrame,
                 n_examples: int = 2) -> None:
    e = html.escape
    fmt = lambda x: "" if pd.isna(x) else f"{x:.2f}"  # noqa: E731
    ci_rows = "".join(
        f"<tr><td>{e(r.lang)}</td><td>{fmt(r.ifl)}</td><td>[{fmt(r.ifl_lo)}, {fmt(r.ifl_hi)}]</td>"
        f"<td>{e(r.ci_method)}</td></tr>" for r in ifl_table.itertuples())
    steered = ""
    if "ifl_steered" in table:
        steered = "<h2>After steering (ifl.remedy.answer_in, query language)</h2><table><tr><th>lang</th>" \
                  "<th>steered - text</th><th>95% CI</th></tr>" + "".join(
                      f"<tr><td>{e(r.lang)}</td><td>{fmt(r.ifl_steered)}</td><td>[{fmt(r.ifl_steered_lo)}, "
                      f"{fmt(r.ifl_steered_hi)}]</td></tr>" for r in table.itertuples()) + "</table>"
    examples = []
    images = dict(zip(tasks["task_id"], tasks["image"]))
    for lang, g in scored.groupby("lang", sort=True):
        for task_id in list(dict.fromkeys(g["task_id"]))[:n_examples]:
            rows = g[g["task_id"] == task_id].set_index("condition")
            q = tasks.loc[tasks["task_id"] == task_id, "question"].iloc[0]
            replies = "".join(f"<li><b>{e(c)}</b> [{e(str(rows.loc[c, 'label']))}]: "
                              f"{e(str(rows.loc[c, 'response']))}</li>" for c in rows.index)
            examples.append(f"<div class=ex><img src='data:image/png;base64,{_thumb(images[task_id])}'>"
                            f"<div><b>{e(lang)}</b> {e(q)}<ul>{replies}</ul></div></div>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>IFL audit: {e(model_name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}
.ex{{display:flex;gap:1em;margin:.5em 0}}</style></head><body>
<h1>Image-induced fidelity loss: {e(model_name)}</h1>
<p>Fidelity: share of replies in the query's language (ifl.langid, the paper's rule), with the
image vs with its description in the image's place. IFL = fidelity(image) - fidelity(text);
negative means the image pulls replies away from the query language.</p>
{table.drop(columns=[c for c in table if c.endswith(('_lo', '_hi')) or c == 'ci_method']).to_html(index=False, float_format='%.2f')}
<h2>IFL with 95% confidence intervals</h2><table><tr><th>lang</th><th>IFL</th><th>95% CI</th><th>method</th></tr>{ci_rows}</table>
{steered}
<h2>Figure</h2><img src="data:image/png;base64,{_figure(table)}">
<h2>Example replies</h2>{''.join(examples)}
<h2>Settings</h2><pre>{e(json.dumps(settings, indent=1, default=str))}</pre></body></html>"""
    path.write_text(page, encoding="utf-8")
