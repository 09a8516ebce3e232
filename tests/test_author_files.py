"""A student's home holds the workshop, not its authors' files: no ``wod.yml``, no ``README.md`` unless asked for."""

import shutil

import pytest

from wod_jupyterhub.catalog import load_catalog
from wod_jupyterhub.completion import provisioned_notebooks
from wod_jupyterhub.config import Wod, share_dir
from wod_jupyterhub.homes import drain, provision, stage
from wod_jupyterhub.variables import template_variables


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("show_readme", [None, "true"])
def test_the_home_leaves_out_wod_yml_and_the_readme_unless_the_workshop_shows_it(tmp_path, staged, show_readme):
    root = tmp_path / "notebooks"
    shutil.copytree(share_dir() / "workshops" / "WKSHP-PythonBasics", root / "WKSHP-PythonBasics")
    if show_readme:
        with open(root / "WKSHP-PythonBasics" / "wod.yml", "a") as f:
            f.write(f"show_readme: {show_readme}\n")
    wod = Wod(students_root=str(tmp_path / "students"), notebooks=[str(root)])
    ws = load_catalog([root]).get("WKSHP-PythonBasics")
    assert ws.problems == []
    if staged:
        stage(wod, ws, 2)
    home = provision(wod, ws, 2, template_variables(wod, ws, 2, "pw"))
    drain()
    names = {p.name for p in (home / "WKSHP-PythonBasics").iterdir()}
    assert "0-ReadMeFirst.ipynb" in names and "wod.yml" not in names
    assert ("README.md" in names) == bool(show_readme)
    assert provisioned_notebooks(ws) == ["0-ReadMeFirst.ipynb", "1-WKSHP-Loops.ipynb"]
