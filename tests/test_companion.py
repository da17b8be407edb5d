"""The companion page: each section's figures inline, the findings table, one offline HTML file;
and a check in a real headless browser (Debian's chromium) that it loads and that every image
and link resolves."""
import csv
import html.parser
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from ifl.companion import write_index
from ifl.params import load_params
from ifl.stage import open_stage

FINDINGS = [
    {"finding": "IFL of LLaVA-1.5 on MaXM (zh)", "paper": "0.41", "run": "0.3871",
     "ci_low": "0.31", "ci_high": "0.46", "agrees": "True"},
    {"finding": "German LLM lowers IFL in German", "paper": "-0.12", "run": "0.02",
     "ci_low": "-0.05", "ci_high": "0.09", "agrees": "False"},
]


def _figure(stage, name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1, 2], [2, 1, 3])
    ax.set_title(name)
    stage.save_figure(fig, name)
    plt.close(fig)


@pytest.fixture
def run(tmp_path):
    """An output tree as a run leaves it: two finished stages with figures, a failed one."""
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(
        {"common": {"run_name": "r", "output_root": str(tmp_path / "out")}}))
    params = load_params(tmp_path / "p.yaml")
    for name, figures in [("01_translate_data", ["01_tasks_per_language"]),
                          ("05_dsl_regressions", ["05_figure1_ifl", "05_table4_design_effects"])]:
        stage = open_stage(name, output_root=tmp_path / "out", run_name="r")
        for figure in figures:
            _figure(stage, figure)
        stage.finish(f"headline of {name}")
        (tmp_path / f"out/rendered/r/{name}.html").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"out/rendered/r/{name}.html").write_text("<html>notebook</html>")
        (tmp_path / f"out/rendered/r/{name}.ipynb").write_text("{}")
    (tmp_path / "out/rendered/r/02_train_variants.html").write_text("<html>failed</html>")
    return params, tmp_path


def _write_findings(tmp_path, rows, columns=None):
    path = tmp_path / "out/runs/r/findings.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])


def _refs(page: str) -> _Refs:
    refs = _Refs()
    refs.feed(page)
    return refs


def test_sections_show_their_figures_inline_linking_to_png_and_pdf(run):
    params, tmp_path = run
    index = write_index(params, tmp_path, params_file="p.yaml")
    page = index.read_text()
    refs = _refs(page)
    assert len(refs.images) == 3 and all(s.startswith("data:image/png;base64,") for s in refs.images)
    for link in refs.links:  # every link resolves on disk, relative to the page
        assert (index.parent / unquote(link)).exists(), link
    assert "../../paper_figures/r/05_figure1_ifl.png" in refs.links
    assert "../../paper_figures/r/05_figure1_ifl.pdf" in refs.links
    # each figure sits with its own section: after its headline, before the next section
    section_05 = page[page.index("headline of 05_dsl_regressions"):page.index("UMAP / CKA")]
    assert "05_figure1_ifl" in section_05 and "05_table4_design_effects" in section_05
    assert "01_tasks_per_language" not in section_05
    assert "failed: see the notebook" in page
    # offline: no script, no remote address
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)


def test_findings_table_puts_the_paper_beside_the_run(run):
    params, tmp_path = run
    _write_findings(tmp_path, FINDINGS)
    page = write_index(params, tmp_path, params_file="p.yaml").read_text()
    row = page[page.index("IFL of LLaVA-1.5 on MaXM (zh)"):]
    row = row[:row.index("</tr>")]
    assert re.findall(r"<td>([^<]*)</td>", row) == ["0.41", "0.387", "[0.31, 0.46]", "✓ yes"]
    assert "✗ no" in page


def test_findings_absent_or_malformed_leave_a_note_not_an_error(run):
    params, tmp_path = run
    page = write_index(params, tmp_path, params_file="p.yaml").read_text()
    assert "No findings table in this run yet" in page
    _write_findings(tmp_path, FINDINGS, columns=["finding", "paper", "run"])
    page = write_index(params, tmp_path, params_file="p.yaml").read_text()
    assert "findings.csv</b> lacks the column(s) ci_low, ci_high, agrees" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# appended to a copy of the page: the browser reports what it loaded into the DOM it dumps
PROBE = """<script>
window.addEventListener("load", () => {
  const bad = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: document.images.length, broken: bad,
                                    links: [...document.links].map(a => a.href)});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_a_full_disk_leaves_the_previous_page_whole(run, monkeypatch):
    import errno
    params, tmp_path = run
    index = write_index(params, tmp_path, params_file="p.yaml")
    before = index.read_text()

    def full_disk(self, text, **kw):  # half the page, then the disk is full
        with open(self, "w") as f:
            f.write(text[:100])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError) as err:
        write_index(params, tmp_path, params_file="p.yaml")
    assert err.value.filename == str(index)
    assert index.read_text() == before and not list(index.parent.glob(".*.tmp"))


def test_page_loads_in_a_headless_browser_with_every_image_and_link(run, tmp_path):
    import json
    params, root = run
    _write_findings(root, FINDINGS)
    index = write_index(params, root, params_file="p.yaml")
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--user-data-dir=" + str(tmp_path / "chromium-profile"),
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.S)
    assert found, f"the page did not load: {out.stderr[-2000:]}"
    report = json.loads(html.unescape(found.group(1)))
    assert report["images"] == 3 and report["broken"] == []
    assert len(report["links"]) >= 7
    for link in report["links"]:  # as the browser resolved them
        url = urlparse(link)
        assert url.scheme == "file", link
        assert Path(unquote(url.path)).exists(), link
