"""A provisioned notebook carries the kernel metadata JupyterLab writes on open, measured from the students' Python.

The students' Python here is a real one: the interpreter of the tests
(``$WOD_STUDENT_PYTHON`` when set), asked once in a child process.
"""

import json
import os
import sys

import pytest

from wod_jupyterhub.config import Wod
from wod_jupyterhub.workshops.kernels import Kernels
from wod_jupyterhub.workshops.templating import Renderer

PYTHON = os.environ.get("WOD_STUDENT_PYTHON") or sys.executable


@pytest.fixture(scope="module")
def kernels():
    return Kernels(PYTHON)


def notebook(metadata) -> str:
    cell = {"cell_type": "markdown", "id": "a1", "metadata": {}, "source": "Hello {{ STDID }}"}
    return json.dumps({"cells": [cell], "metadata": metadata, "nbformat": 4, "nbformat_minor": 5})


def test_the_measure_is_what_the_students_python_reports(kernels):
    import ipykernel.ipkernel

    found = kernels.measured()
    assert found["kernelspecs"]["python3"]["display_name"] == "Python 3 (ipykernel)"
    assert found["kernelspecs"]["python3"]["language"] == "python"
    if PYTHON == sys.executable:  # the same interpreter: the kernel's own class says the same
        assert found["language_info"] == ipykernel.ipkernel.IPythonKernel.language_info
    assert found["language_info"]["name"] == "python" and found["language_info"]["version"].count(".") == 2


@pytest.mark.parametrize(
    "metadata",
    [
        {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}, "language_info": {"name": "python"}},
        {},  # none: JupyterLab starts the default kernel and writes it in
        {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3", "env": {}}},
    ],
)
def test_a_rendered_notebook_has_exactly_its_kernels_metadata(tmp_path, kernels, metadata):
    path = tmp_path / "0-ReadMeFirst.ipynb"
    path.write_text(notebook(metadata))
    out = json.loads(Renderer(kernels=kernels).render_file(path, "W/0-ReadMeFirst.ipynb", {"STDID": 7}))
    found = kernels.measured()
    assert out["metadata"]["kernelspec"] == {"name": "python3", **{k: found["kernelspecs"]["python3"][k] for k in ("display_name", "language")}}
    assert out["metadata"]["language_info"] == found["language_info"]
    assert out["cells"][0]["source"] == "Hello 7"


def test_a_kernel_the_students_do_not_have_is_left_as_the_author_wrote_it(tmp_path, kernels):
    bash = {"kernelspec": {"display_name": "Bash", "language": "bash", "name": "bash"}, "language_info": {"name": "bash"}}
    path = tmp_path / "nb.ipynb"
    path.write_text(notebook(bash))
    out = json.loads(Renderer(kernels=kernels).render_file(path, "W/nb.ipynb", {"STDID": 7}))
    assert out["metadata"] == bash


def test_a_python_that_cannot_be_asked_leaves_notebooks_alone_with_a_warning(tmp_path, caplog):
    metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    path = tmp_path / "nb.ipynb"
    path.write_text(notebook(metadata))
    out = json.loads(Renderer(kernels=Kernels(str(tmp_path / "no-python"))).render_file(path, "W/nb.ipynb", {"STDID": 7}))
    assert out["metadata"] == metadata
    assert any("keep their kernel metadata" in r.getMessage() for r in caplog.records)


def test_the_default_python_is_the_servers_own():
    from traitlets.config import Config

    config = Config()
    config.WodSpawner.cmd = ["/opt/students/bin/python3", "-m", "jupyterhub.singleuser"]
    assert Wod(config=config).kernel_python == "/opt/students/bin/python3"
    config = Config()
    config.Spawner.cmd = ["jupyterhub-singleuser"]  # not a Python: the hub's own
    assert Wod(config=config).kernel_python == sys.executable
