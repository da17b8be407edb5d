"""JupyterLab opens notebooks/NN_*.py as notebooks: the repository's jupytext.toml (read by
Jupytext's contents manager, the one JupyterLab's server uses) and .jupyter/labconfig (the
default viewer of .py files, which ./lab.sh puts on JUPYTER_CONFIG_PATH)."""
import asyncio
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))


def test_contents_manager_opens_each_notebook_and_saves_it_back_unchanged(tmp_path):
    """What JupyterLab does on open and save, through the same contents manager: a notebook
    in the project's kernel with its parameters cell; saving writes the .py byte for byte as
    it was (no version numbers added to the header, no paired .ipynb beside it)."""
    from jupytext import AsyncTextFileContentsManager

    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    shutil.copy(REPO / "jupytext.toml", tmp_path)
    manager = AsyncTextFileContentsManager(root_dir=str(tmp_path))

    async def open_and_save(name):
        model = await manager.get(f"notebooks/{name}", content=True, type="notebook")
        await manager.save(model, f"notebooks/{name}")
        return model

    assert NOTEBOOKS
    for source in NOTEBOOKS:
        model = asyncio.run(open_and_save(source.name))
        assert model["type"] == "notebook", source.name
        nb = model["content"]
        assert nb.metadata["kernelspec"]["name"] == "ifl", source.name
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), source.name
        assert (tmp_path / "notebooks" / source.name).read_bytes() == source.read_bytes(), source.name
    assert sorted(p.name for p in (tmp_path / "notebooks").iterdir()) == [p.name for p in NOTEBOOKS]


def test_lab_config_makes_jupytext_notebook_the_default_viewer_of_py_files(monkeypatch):
    from jupyterlab_server.settings_utils import _get_overrides

    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(REPO / ".jupyter"))
    overrides, error = _get_overrides(str(REPO / "no-app-settings"))
    assert not error
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers == {"python": "Jupytext Notebook"}
    assert "JUPYTER_CONFIG_PATH=\"$ROOT/.jupyter" in (REPO / "lab.sh").read_text()


def test_the_installed_jupytext_lab_extension_still_names_its_viewer_so():
    """The viewer name is the lab extension's; a renamed factory would silently open text."""
    from jupyter_core.paths import jupyter_path

    folders = [Path(p) / "jupyterlab-jupytext" for p in jupyter_path("labextensions")]
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None:
        pytest.skip("jupyterlab-jupytext lab extension not installed")
    package = json.loads((folder / "package.json").read_text())
    assert any("Jupytext Notebook" in js.read_text(errors="ignore")
               for js in (folder / "static").glob("*.js")), package["version"]
