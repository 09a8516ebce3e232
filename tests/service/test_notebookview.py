"""A participant's notebook rendered for the instructor: every text escaped, only checked images shown, no link followed."""

import json

import pytest

from wod_jupyterhub.service.notebookview import CSP, render, render_file


def test_every_source_and_output_is_escaped_and_only_images_are_rich():
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["<script>alert(1)</script>"]},
        {"cell_type": "code", "execution_count": 3, "source": "print('<b>')", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": ["<iframe src=x>"]},
            {"output_type": "display_data", "data": {"text/html": "<img src=x onerror=alert(2)>", "text/plain": "plain"}},
            {"output_type": "execute_result", "data": {"image/png": "iVBORw0KGgo=\n"}},
            {"output_type": "display_data", "data": {"image/png": "\"><script>x</script>"}},
            {"output_type": "error", "ename": "E", "evalue": "v", "traceback": ["\x1b[31m<svg onload=alert(3)>\x1b[0m"]},
        ]},
        "not a cell", {"cell_type": "<evil>", "source": 42},
    ]}
    page = render(nb, "<title>")
    for raw in ("<script", "<iframe", "<img src=x", "<svg", "onerror=alert(2)>"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;iframe src=x&gt;" in page and "&lt;svg onload=alert(3)&gt;" in page
    assert page.count("<img ") == 1 and 'src="data:image/png;base64,iVBORw0KGgo="' in page
    assert "In [3]" in page and "&lt;title&gt;" in page
    assert "sandbox" in CSP and "script-src" not in CSP and "default-src 'none'" in CSP


def test_a_file_that_is_no_notebook_or_a_link_is_not_followed(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.ipynb").write_text("{not json")
    assert "holds no cells" in render_file(tmp_path / "ws", "a.ipynb")
    (tmp_path / "secret").write_text(json.dumps({"cells": [{"cell_type": "code", "source": "SECRET", "outputs": []}]}))
    (tmp_path / "ws" / "b.ipynb").symlink_to(tmp_path / "secret")
    with pytest.raises(ValueError):
        render_file(tmp_path / "ws", "b.ipynb")
    (tmp_path / "ws" / "deep").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        render_file(tmp_path / "ws", "deep/secret")
    with pytest.raises(ValueError):
        render_file(tmp_path / "ws", "../secret")
