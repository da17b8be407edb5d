"""The house rules, read from the source: one stage module per notebook, importing no other
stage; no import cycles inside the package; prerequisites declared once (ifl/artifacts.csv) and
used by the notebooks through `stage.input`."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from ifl.stage import artifacts, outputs, pipeline, prerequisites

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ifl"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def module_name(path: Path) -> str:
    """ifl/stages/steering.py -> ifl.stages.steering; ifl/paper/__init__.py -> ifl.paper."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The ifl modules `path` imports (anywhere in the file: lazy imports count too). `from pkg
    import sub` names the submodule pkg.sub where there is one, else pkg itself."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES or (ROOT / sub.replace(".", "/")).is_dir() else node.module)
    return {name for name in found if name == "ifl" or name.startswith("ifl.")}


GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name}
         for name, path in MODULES.items()}


def test_no_prepare_modules_are_left():
    assert not list(PACKAGE.glob("prepare_*.py"))


def test_one_stage_module_per_notebook_named_after_it():
    stages = {p.stem for p in (PACKAGE / "stages").glob("*.py") if p.stem != "__init__"}
    assert stages == {p.stem.split("_", 1)[1] for p in NOTEBOOKS}


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("ifl.stages.")))
def test_a_stage_imports_no_other_stage(name):
    others = {m for m in GRAPH[name] if m.startswith("ifl.stages.")}
    assert not others, f"{name} imports {others}: move what they share down a layer"


def test_no_module_below_the_stages_imports_a_stage():
    for name, deps in GRAPH.items():
        if not name.startswith("ifl.stages"):
            assert not {d for d in deps if d.startswith("ifl.stages")}, name


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as [a, b, ..., a], or None (depth-first search; a back edge closes one)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_can_fail():
    """A graph with a cycle is found; an import of a stage is seen, lazy ones too."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = "def f():\n    from ifl.stages import steering\n    import ifl.runtime\n"
    tmp = ROOT / "tests" / "data" / "_imports_probe.py"
    try:
        tmp.write_text(source)
        assert {"ifl.stages.steering", "ifl.runtime"} <= imports_of(tmp)
    finally:
        tmp.unlink()


def test_artifacts_are_declared_once_by_known_stages():
    numbers = {row["number"] for row in pipeline()}
    rows = artifacts()
    names = [row["artifact"] for row in rows]
    assert len(names) == len(set(names))
    for row in rows:
        assert row["stage"] in numbers, row
        assert set(row["read_by"].split()) <= numbers, row
        assert all(reader > row["stage"] for reader in row["read_by"].split()), row  # only later stages


def test_prerequisites_follow_from_what_each_notebook_reads():
    """The runner's prerequisites (from ifl/artifacts.csv) are exactly the stages whose outputs the
    notebook asks for with stage.input / stage.optional_input, and nothing is read by file name."""
    producer = {row["artifact"]: row["stage"] for row in artifacts()}
    readers = {row["artifact"]: row["read_by"].split() for row in artifacts()}
    names = {row["number"]: row["name"] for row in pipeline()}
    for path in NOTEBOOKS:
        source = path.read_text(encoding="utf-8")
        assert "stage.require(" not in source, f"{path.name}: read inputs with stage.input(artifact)"
        read = set(re.findall(r"stage\.(?:optional_)?input\(\"([a-z_0-9]+)\"\)", source))
        assert read <= set(producer), f"{path.name} reads undeclared {read - set(producer)}"
        number = path.stem.split("_", 1)[0]
        assert all(number in readers[a] for a in read), f"{path.name}: not declared a reader of {read}"
        expected = sorted({names[producer[a]] for a in read})
        assert prerequisites(path.stem) == expected, path.name


def stage_outputs_named(source: str) -> set[str]:
    """The artifacts `source` names in `stage.output(artifact)` and `stage.write_table(df,
    artifact)`; raise where an artifact is not a literal string (this check could not see it)."""
    named = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "stage"):
            continue
        position = {"output": 0, "write_table": 1}.get(node.func.attr)
        if position is None:
            continue
        arg = node.args[position] if len(node.args) > position else None
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            raise AssertionError(f"line {node.lineno}: stage.{node.func.attr} needs the artifact's "
                                 "name as a literal string")
        named.add(arg.value)
    return named


def test_notebooks_write_their_declared_outputs_through_stage_output():
    for path in NOTEBOOKS:
        written = stage_outputs_named(path.read_text(encoding="utf-8"))
        assert written <= set(outputs(path.stem)), f"{path.name} writes undeclared {written - set(outputs(path.stem))}"


# A table or text written straight to a file is left half-written by a full disk, and its error
# may not name the file; stage.write_table and write_json_atomic write through a temporary file.
DIRECT_WRITES = re.compile(r"\.(to_csv|to_parquet|write_text|write_bytes)\(")
DIRECT_WRITES_STILL_IN: set[str] = set()  # every notebook writes through the stage


def test_notebooks_write_tables_and_text_atomically():
    for path in NOTEBOOKS:
        if path.stem in DIRECT_WRITES_STILL_IN:
            continue
        lines = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if DIRECT_WRITES.search(line)]
        assert not lines, f"{path.name} writes directly (use stage.write_table / write_json_atomic): {lines}"


def test_the_output_checks_can_fail():
    assert stage_outputs_named('stage.write_table(t[["a"]], "scored")\nstage.output("tasks")') == {"scored", "tasks"}
    with pytest.raises(AssertionError, match="line 1: stage.write_table needs the artifact's name"):
        stage_outputs_named('stage.write_table(t, f"ifl_remedy_{col}")')
    assert DIRECT_WRITES.search('table.to_csv(stage.path("x.csv"))')


def test_notebooks_open_with_begin_and_keep_no_device_logic():
    for path in NOTEBOOKS:
        source = path.read_text(encoding="utf-8")
        assert f'begin(globals(), "{path.stem}")' in source, path.name
        for glue in ("cuda.is_available", "__import__(", "def free_memory", "from ifl.params import from_notebook"):
            assert glue not in source, f"{path.name} still holds {glue!r}"


def test_the_repository_cites_only_documents_it_contains():
    """Design notes a reader needs live under docs/; nothing points outside the repository."""
    outside = ["shared" + "/reference", "ANCH" + "ORS", "DESIGN" + ".md", "SOURCES" + ".md",
               "STEERING_CKA" + "_UMAP.md", "the issue's" + " target"]
    files = [p for folder in ("ifl", "notebooks", "tests", "benchmarks", "docs", "scripts")
             for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".csv", ".sh")]
    files += [ROOT / "README.md", ROOT / "run_all.sh", ROOT / "run_tests.sh"]
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not [w for w in outside if w in text], f"{path.relative_to(ROOT)} cites {[w for w in outside if w in text]}"
    cited = {m for p in files for m in re.findall(r"docs/[a-z_]+\.md", p.read_text(encoding="utf-8", errors="replace"))}
    assert cited and all((ROOT / c).is_file() for c in cited), cited
    for path in (p for p in files if p.suffix == ".py" and p.relative_to(ROOT).parts[0] in PROSE_CHECKED):
        found = tracker_references(path.read_text(encoding="utf-8"))
        assert not found, f"{path.relative_to(ROOT)} cites the project's tracker: {found}"


PROSE_CHECKED = ("ifl", "tests", "benchmarks", "notebooks")
TRACKER = re.compile(r"\bissues? #?\d+", re.IGNORECASE)  # a numbered issue: a tracker the reader lacks


def tracker_references(source: str) -> list[str]:
    """The tracker references (a numbered issue) in the comments and string literals (docstrings,
    and a jupytext notebook's markdown cells, which are comments) of Python `source`."""
    prose = {tokenize.COMMENT, tokenize.STRING}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [m for tok in tokens if tok.type in prose for m in TRACKER.findall(tok.string)]


def test_the_tracker_check_can_fail():
    issue = "iss" + "ue"  # spelled apart, so this file does not cite a tracker itself
    source = (f'"""Fixes {issue} 12."""\n'
              f"x = 12  # see {issue.title()} #15\n"
              f"issue = 3  # code, not prose: an {issue} 4 mentioned only here counts\n")
    assert tracker_references(source) == [f"{issue} 12", f"{issue.title()} #15", f"{issue} 4"]
    assert tracker_references("issue = 3\nissues = [issue, 4]\n") == []


def test_the_companion_links_the_declared_outputs_a_stage_wrote(tmp_path):
    from ifl.companion import _output_links

    stage_dir = tmp_path / "runs/r/04_score_languages"
    stage_dir.mkdir(parents=True)
    (stage_dir / "scored.parquet").write_bytes(b"x")
    (stage_dir / "scratch.txt").write_text("not declared")
    links = _output_links(tmp_path / "runs/r", "04_score_languages", tmp_path / "rendered/r")
    assert 'href="../../runs/r/04_score_languages/scored.parquet"' in links
    assert "scratch.txt" not in links and "identifier.json" not in links  # undeclared / not written
