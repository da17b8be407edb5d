"""Every notebook: one parameters cell whose defaults are exactly params/default.yaml's values,
so a reader who opens the .py in Jupyter runs the same thing as ./run_all.sh."""
import ast
from pathlib import Path

import jupytext
import pytest

from ifl.params import load_params, notebook_parameters
from ifl.stage import pipeline

NOTEBOOKS = sorted(Path("notebooks").glob("[0-9][0-9]_*.py"))


def parameters_cell(path: Path) -> dict:
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path}: expected exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), f"{path}: the parameters cell holds only assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_every_notebook_is_in_the_pipeline_table():
    names = {row["name"] for row in pipeline()}
    assert NOTEBOOKS and all(path.stem in names for path in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_matches_default_params(path):
    expected = notebook_parameters(load_params("params/default.yaml"), path.stem)
    assert parameters_cell(path) == expected
