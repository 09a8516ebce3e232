"""The completion ratio: executed code cells over code cells, parsed, never grepped."""

import json
import os
import shutil

import nbformat
import pytest

from wod_jupyterhub.errors import BadRequest, NotFound
from wod_jupyterhub.seats.completion import completion, notebook_completion, percent


def code(source, count=None, outputs=()):
    return {"cell_type": "code", "execution_count": count, "metadata": {}, "outputs": list(outputs), "source": source}


def md(source):
    return {"cell_type": "markdown", "metadata": {}, "source": source}


def result(count, text="42"):
    return {"output_type": "execute_result", "execution_count": count, "data": {"text/plain": text}, "metadata": {}}


def write_nb(path, cells, **top):
    for i, cell in enumerate(cells):
        cell.setdefault("id", f"cell{i}")
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells, **top}
    path.parent.mkdir(parents=True, exist_ok=True)
    # indent=1 as Jupyter writes it: one key per line, which is what grep sees
    path.write_text(json.dumps(nb, indent=1))
    return path


def grep_ratio(path):
    """What the original did: count the lines naming execution_count, and those with null."""
    lines = [line for line in path.read_text().splitlines() if "execution_count" in line]
    not_run = [line for line in lines if "null" in line]
    return (len(lines) - len(not_run)) * 100 // len(lines)


def reference_count(path):
    """An independent count through nbformat (slow, validating): (executed, total)."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    return sum(c.execution_count is not None for c in cells), len(cells)


# -- the acceptance test: a real notebook run by a real kernel -------------------------------


async def test_first_k_cells_run_by_a_real_kernel(tmp_path, corpus):
    from nbclient import NotebookClient

    src = corpus / "WKSHP-Python101" / "1-WKSHP-Introduction-to-Python.ipynb"
    path = tmp_path / src.name
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)
    assert completion(path)["executed"] == 0

    # The first five code cells print and assign; the sixth waits for input(),
    # and later ones reach the network, so five run the same way every time.
    k = 5
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    total = sum(1 for _, c in code_cells if c.source.strip())
    assert total == len(code_cells) - 1  # the last code cell of this notebook is empty
    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    async with client.async_setup_kernel():
        for index, cell in code_cells[:k]:
            await client.async_execute_cell(cell, index)
    nbformat.write(nb, path)

    got = completion(path)
    assert (got["executed"], got["total"]) == (k, total)
    assert got["ratio"] == k * 100 // total
    assert got["notebooks"] == [{"path": path.name, "executed": k, "total": total, "error": None}]
    # The kernel's results carry an execution_count too: grepping would count them.
    assert any(o.get("execution_count") for _, c in code_cells[:k] for o in c.outputs)
    assert grep_ratio(path) != got["ratio"]


# -- counting rules ---------------------------------------------------------------------------


def test_outputs_execution_count_is_not_a_cell(tmp_path):
    path = write_nb(tmp_path / "a.ipynb", [code("1 + 1", 1, [result(1)]), code("2 + 2")])
    assert notebook_completion(path) == {"path": str(path), "executed": 1, "total": 2, "error": None}
    assert completion(path)["ratio"] == 50
    assert grep_ratio(path) == 66  # the original's answer: the output counted as a second run cell


def test_blank_code_cells_do_not_count(tmp_path):
    cells = [
        code("print(1)", 3),
        code(["x = 1\n", "x"]),
        code(""),
        code([]),
        code(["", "\n", "   "]),
        code("  \n\t"),
        code("", 7),  # a count on a blank cell counts neither way
        md("text that is not code"),
        {"cell_type": "raw", "metadata": {}, "source": "print(2)"},
    ]
    path = write_nb(tmp_path / "a.ipynb", cells)
    got = notebook_completion(path)
    assert (got["executed"], got["total"], got["error"]) == (1, 2, None)
    assert reference_count(path) == (1, 2)


def test_list_source_with_content_after_blank_lines(tmp_path):
    path = write_nb(tmp_path / "a.ipynb", [code(["\n", "  ", "print(1)"], 2)])
    assert notebook_completion(path)["executed"] == notebook_completion(path)["total"] == 1


def test_percent_rounds_down():
    assert percent(2, 3) == 66
    assert percent(199, 200) == 99  # 99.5 % is not done
    assert percent(200, 200) == 100
    assert percent(0, 0) == 0


def test_no_code_cells(tmp_path):
    path = write_nb(tmp_path / "readme.ipynb", [md("# Hello")])
    got = completion(path)
    assert got == {
        "ratio": 0,
        "executed": 0,
        "total": 0,
        "notebooks": [{"path": "readme.ipynb", "executed": 0, "total": 0, "error": None}],
    }


def test_nbformat_3(tmp_path):
    nb = {
        "nbformat": 3,
        "nbformat_minor": 0,
        "metadata": {"name": "old"},
        "worksheets": [
            {
                "cells": [
                    {"cell_type": "code", "input": ["1 + 1"], "language": "python", "prompt_number": 1,
                     "outputs": [{"output_type": "pyout", "prompt_number": 1, "text": ["2"]}]},
                    {"cell_type": "code", "input": "x = 2", "language": "python", "outputs": []},
                    {"cell_type": "code", "input": [], "language": "python", "outputs": []},
                    {"cell_type": "markdown", "source": ["text"]},
                ]
            },
            {"cells": [{"cell_type": "code", "input": "y = 3", "prompt_number": 4, "outputs": []}]},
        ],
    }
    path = tmp_path / "v3.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    got = notebook_completion(path)
    assert (got["executed"], got["total"], got["error"]) == (2, 3, None)


@pytest.mark.parametrize(
    "content, error",
    [
        (b"", "empty file"),
        (b"  \n", "empty file"),
        (b"{\"nbformat\": 4, \"cells\": [", "invalid JSON"),
        (b"this is not JSON", "invalid JSON"),
        (b"\xff\xfe{}", "invalid JSON"),
        (b"[1, 2]", "not a notebook"),
        (b"{\"cells\": []}", "no nbformat"),
        (b"{\"nbformat\": 2, \"worksheets\": []}", "nbformat 2 is not supported"),
        (b"{\"nbformat\": 4, \"cells\": {}}", "no list of cells"),
        (b"{\"nbformat\": 4, \"cells\": [1]}", "a cell is not an object"),
        (b"{\"nbformat\": 4, \"cells\": [{\"cell_type\": \"code\", \"source\": 5}]}", "source is not text"),
        (b"{\"nbformat\": 4, \"cells\": [{\"cell_type\": \"code\", \"source\": [5]}]}", "source is not text"),
        (b"{\"nbformat\": 3, \"worksheets\": 1}", "list of worksheets"),
        (b"[" * 100000 + b"]" * 100000, "invalid JSON"),
    ],
    ids=["empty", "blank", "truncated", "garbage", "not-utf8", "array", "no-version", "nbformat2",
         "cells-object", "cell-int", "source-int", "source-list-int", "worksheets-int", "deep"],
)
def test_unreadable_notebook_is_reported_not_raised(tmp_path, content, error):
    bad = tmp_path / "ws" / "bad.ipynb"
    bad.parent.mkdir()
    bad.write_bytes(content)
    got = notebook_completion(bad)
    assert got["error"] and error in got["error"]
    assert (got["executed"], got["total"]) == (0, 0)
    # in a workshop, the others still count
    write_nb(tmp_path / "ws" / "good.ipynb", [code("a", 1), code("b")])
    ws = completion(tmp_path / "ws")
    assert (ws["ratio"], ws["executed"], ws["total"]) == (50, 1, 2)
    assert [(n["path"], bool(n["error"])) for n in ws["notebooks"]] == [("bad.ipynb", True), ("good.ipynb", False)]


def test_huge_outputs(tmp_path):
    blob = "x" * 1_000_000 + "\n"
    stream = {"output_type": "stream", "name": "stdout", "text": [blob] * 8}
    cells = [code(f"print({i})", i + 1, [stream, result(i + 1)]) for i in range(4)] + [code("never run")]
    path = write_nb(tmp_path / "big.ipynb", cells)
    assert path.stat().st_size > 30_000_000
    got = notebook_completion(path)
    assert (got["executed"], got["total"], got["error"]) == (4, 5, None)
    # beyond the limit it is reported, not parsed
    capped = notebook_completion(path, max_bytes=1_000_000)
    assert "too large" in capped["error"] and capped["total"] == 0


def test_workshop_breakdown(tmp_path):
    ws = tmp_path / "WKSHP-Demo"
    write_nb(ws / "0-ReadMeFirst.ipynb", [md("# Read me")])
    write_nb(ws / "1-Intro.ipynb", [code("a", 1), code("b", 2), code("c")])
    write_nb(ws / "sub" / "2-More.ipynb", [code("d", 5), code("e")])
    write_nb(ws / ".ipynb_checkpoints" / "1-Intro-checkpoint.ipynb", [code("a", 1)] * 10)
    write_nb(ws / "sub" / ".ipynb_checkpoints" / "2-More-checkpoint.ipynb", [code("a", 1)])
    (ws / "README.md").write_text("execution_count: 1\n")
    got = completion(ws)
    assert got == {
        "ratio": 60,
        "executed": 3,
        "total": 5,
        "notebooks": [
            {"path": "0-ReadMeFirst.ipynb", "executed": 0, "total": 0, "error": None},
            {"path": "1-Intro.ipynb", "executed": 2, "total": 3, "error": None},
            {"path": "sub/2-More.ipynb", "executed": 1, "total": 2, "error": None},
        ],
    }
    assert json.loads(json.dumps(got)) == got
    under_home = completion(ws, relative_to=tmp_path)
    assert [n["path"] for n in under_home["notebooks"]][0] == "WKSHP-Demo/0-ReadMeFirst.ipynb"


def test_links_and_special_files_in_a_home_are_not_followed(tmp_path):
    """A home belongs to its student; the service reads it as root."""
    outside = write_nb(tmp_path / "elsewhere" / "secret.ipynb", [code("a", 1)] * 3)
    ws = tmp_path / "WKSHP-Demo"
    write_nb(ws / "1-Intro.ipynb", [code("a", 1), code("b")])
    (ws / "link.ipynb").symlink_to(outside)
    (ws / "zero.ipynb").symlink_to("/dev/zero")
    (ws / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(ws / "fifo.ipynb")
    (ws / "dir.ipynb").mkdir()
    got = completion(ws)
    assert (got["executed"], got["total"]) == (1, 2)
    errors = {n["path"]: n["error"] for n in got["notebooks"]}
    assert errors["1-Intro.ipynb"] is None
    assert "symbolic link" in errors["link.ipynb"] and "symbolic link" in errors["zero.ipynb"]
    assert "not a regular file" in errors["fifo.ipynb"]
    assert "dir.ipynb" not in errors  # a folder, walked into, holding nothing
    assert not any("secret" in p for p in errors)
    # named explicitly, a single notebook is read through its link
    assert completion(ws / "link.ipynb")["executed"] == 3


def test_bad_paths_raise_clear_errors(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        completion(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BadRequest, match="neither a workshop folder nor a notebook"):
        completion(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    assert completion(tmp_path / "empty") == {"ratio": 0, "executed": 0, "total": 0, "notebooks": []}


def test_every_real_notebook_agrees_with_nbformat(tmp_path, corpus):
    notebooks = sorted(corpus.glob("WKSHP-*/**/*.ipynb"))
    assert len(notebooks) > 50
    for path in notebooks:
        got = notebook_completion(path)
        assert got["error"] is None, path
        assert (got["executed"], got["total"]) == reference_count(path), path
    whole = completion(corpus / "WKSHP-Docker101")
    assert whole["total"] == sum(reference_count(p)[1] for p in (corpus / "WKSHP-Docker101").glob("*.ipynb"))
    shutil.copytree(corpus / "WKSHP-Docker101", tmp_path / "copy")
    assert completion(tmp_path / "copy") == whole


# -- a home is the student's: hostile content -------------------------------------------


def test_a_linked_workshop_folder_is_not_walked(tmp_path):
    """``~/WKSHP-X -> /`` or ``-> a neighbour's folder``: the walk never leaves the folder it was given."""
    neighbour = tmp_path / "student2" / "WKSHP-Demo"
    write_nb(neighbour / "1-Intro.ipynb", [code("a", 1), code("b", 2)])
    home = tmp_path / "student3"
    home.mkdir()
    for target in ("/", neighbour):
        link = home / "WKSHP-Demo"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
        got = completion(link)
        assert (got["ratio"], got["executed"], got["total"], got["notebooks"]) == (0, 0, 0, [])
        assert "symbolic link" in got["problems"][0]
        known = completion(link, notebooks=["1-Intro.ipynb"])
        assert known["total"] == 0 and "symbolic link" in known["notebooks"][0]["error"]


def test_a_linked_folder_inside_is_not_walked_and_a_linked_component_not_opened(tmp_path):
    neighbour = write_nb(tmp_path / "student2" / "WKSHP-Demo" / "sub" / "2-More.ipynb", [code("a", 1)] * 4)
    ws = tmp_path / "student3" / "WKSHP-Demo"
    write_nb(ws / "1-Intro.ipynb", [code("a", 1), code("b")])
    (ws / "sub").symlink_to(neighbour.parent, target_is_directory=True)
    got = completion(ws)
    assert (got["executed"], got["total"]) == (1, 2) and [n["path"] for n in got["notebooks"]] == ["1-Intro.ipynb"]
    known = completion(ws, notebooks=["1-Intro.ipynb", "sub/2-More.ipynb"])
    assert (known["executed"], known["total"]) == (1, 2)
    assert "symbolic link" in known["notebooks"][1]["error"]


def test_only_the_named_notebooks_count(tmp_path):
    """A fabricated notebook in the folder must not give 100 %."""
    ws = tmp_path / "WKSHP-Demo"
    write_nb(ws / "0-ReadMeFirst.ipynb", [md("# Read me")])
    write_nb(ws / "1-Intro.ipynb", [code("a", 1), code("b"), code("c")])
    write_nb(ws / "fabricated.ipynb", [code("x", 1)] * 100)
    got = completion(ws, notebooks=["0-ReadMeFirst.ipynb", "1-Intro.ipynb", "gone/2-Deleted.ipynb"])
    assert (got["ratio"], got["executed"], got["total"]) == (33, 1, 3)
    assert [n["path"] for n in got["notebooks"]] == ["0-ReadMeFirst.ipynb", "1-Intro.ipynb", "gone/2-Deleted.ipynb"]
    assert "No such file" in got["notebooks"][2]["error"]
    for bad in ("../student2/x.ipynb", "/etc/passwd", "a//b.ipynb"):
        assert "not a path inside" in completion(ws, notebooks=[bad])["notebooks"][0]["error"]


def test_a_3000_deep_tree_is_walked_without_recursion(tmp_path):
    ws = tmp_path / "WKSHP-Deep"
    write_nb(ws / "1-Intro.ipynb", [code("a", 1), code("b")])
    # Relative mkdir in a loop: the full path would pass PATH_MAX long before 3,000 levels.
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(3000):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        with open(os.open("deep.ipynb", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write(json.dumps({"nbformat": 4, "cells": [code("z", 1)]}))
    finally:
        os.close(fd)
    write_nb(ws / "d" / "d" / "2-Near.ipynb", [code("c", 3)])
    got = completion(ws)
    assert (got["executed"], got["total"]) == (2, 3)
    assert [n["path"] for n in got["notebooks"]] == ["1-Intro.ipynb", "d/d/2-Near.ipynb"]
    assert any("deeper than 64 folders" in p for p in got["problems"])
    subprocess_rm(ws)


def subprocess_rm(path):
    """rm -rf (iterative in C): shutil.rmtree recursed too deep here before Python 3.12."""
    import subprocess

    subprocess.run(["rm", "-rf", str(path)], check=True)


def test_too_many_entries_are_reported(tmp_path):
    from wod_jupyterhub.seats import completion as c

    ws = tmp_path / "WKSHP-Many"
    for i in range(30):
        (ws / f"f{i:02d}").mkdir(parents=True)
    write_nb(ws / "1-Intro.ipynb", [code("a", 1)])
    got = c.completion(ws, max_entries=10)
    assert any("more than 10 entries" in p for p in got["problems"])


GOOD_CELL = {"cell_type": "code", "source": "x", "execution_count": 1}
MALFORMED = [
    {"nbformat": 3, "worksheets": [{"cells": 5}]},  # it once raised a TypeError out of the CLEANUP
    {"nbformat": 3, "worksheets": [{"cells": None}]},
    {"nbformat": 3, "worksheets": [{"cells": "abc"}]},
    {"nbformat": 3, "worksheets": [{"cells": [5]}]},
    {"nbformat": 3, "worksheets": [{"cells": [{"cell_type": "code", "input": {"a": 1}}]}]},
    {"nbformat": 3, "worksheets": {}},
    {"nbformat": 4, "cells": None},
    {"nbformat": 4, "cells": "abc"},
    {"nbformat": 4, "cells": [None]},
    {"nbformat": 4, "cells": [[]]},
    {"nbformat": 4, "cells": [{"cell_type": ["code"], "source": "x"}]},
    {"nbformat": 4, "cells": [{"cell_type": {"a": 1}, "source": "x"}]},
    {"nbformat": 4, "cells": [{"cell_type": "code", "source": None}]},
    {"nbformat": 4, "cells": [{"cell_type": "code", "source": [None]}]},
    {"nbformat": 4, "cells": [{"cell_type": "code", "source": [["x"]]}]},
    {"nbformat": 4, "cells": [{"cell_type": "code", "source": 1.5}]},
    {"nbformat": [4], "cells": []},
    {"nbformat": {"v": 4}, "cells": []},
    {"nbformat": True, "cells": [GOOD_CELL]},
    {"nbformat": "4", "cells": []},
    {"nbformat": 4.0, "cells": [GOOD_CELL]},
    {"nbformat": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[4]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
    {"nbformat": 1e308, "cells": []},
    {"nbformat": None},
    [],
    "notebook",
    12,
    None,
]


@pytest.mark.parametrize("nb", MALFORMED, ids=[f"m{i}" for i in range(len(MALFORMED))])
def test_malformed_notebooks_are_reported_on_themselves(tmp_path, nb):
    ws = tmp_path / "WKSHP-Bad"
    ws.mkdir()
    (ws / "bad.ipynb").write_text(json.dumps(nb))
    write_nb(ws / "good.ipynb", [code("a", 1), code("b")])
    got = completion(ws)
    by_path = {n["path"]: n for n in got["notebooks"]}
    assert by_path["good.ipynb"]["error"] is None and (got["executed"], got["total"]) >= (1, 2)
    bad = by_path["bad.ipynb"]
    if bad["error"] is None:  # a few are odd but readable (nbformat 4.0): then they count what they hold
        assert bad["total"] <= 1
    else:
        assert bad["error"] and (bad["executed"], bad["total"]) == (0, 0)


def test_fuzzed_notebooks_never_raise(tmp_path):
    """Random mutations of a real notebook's structure: every one gives an entry, none raises."""
    import random

    rng = random.Random(8)
    base = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [code("a", 1), code(["b\n", "c"]), md("m")]}
    v3 = {"nbformat": 3, "worksheets": [{"cells": [{"cell_type": "code", "input": "x", "prompt_number": 1}]}]}
    values = [None, 0, 1, -1, 3, 4, 5, 1.5, True, "", "code", [], {}, [None], [{}], {"cells": 1}, "x" * 50, [[[]]]]

    def mutate(node, depth=0):
        if rng.random() < 0.15 or depth > 4:
            return rng.choice(values)
        if isinstance(node, dict):
            node = {k: mutate(v, depth + 1) if rng.random() < 0.5 else v for k, v in node.items() if rng.random() > 0.1}
        elif isinstance(node, list):
            node = [mutate(v, depth + 1) if rng.random() < 0.5 else v for v in node if rng.random() > 0.1]
        return node

    ws = tmp_path / "WKSHP-Fuzz"
    ws.mkdir()
    for i in range(400):
        (ws / f"n{i:03d}.ipynb").write_text(json.dumps(mutate(base if i % 2 else v3)))
    got = completion(ws)
    assert len(got["notebooks"]) == 400
    assert all((n["executed"], n["total"]) == (0, 0) for n in got["notebooks"] if n["error"])
    assert any(n["error"] for n in got["notebooks"]) and any(n["error"] is None for n in got["notebooks"])


# -- the worker: bounds, memory, failures ----------------------------------------------------


def test_measure_runs_in_a_worker_and_agrees(tmp_path):
    from wod_jupyterhub.seats.completion_worker import measure

    ws = tmp_path / "WKSHP-Demo"
    write_nb(ws / "1-Intro.ipynb", [code("a", 1), code("b"), code("c")])
    write_nb(ws / "sub" / "2-More.ipynb", [code("d", 5), code("e")])
    assert measure(ws) == completion(ws)
    assert measure(ws, notebooks=["sub/2-More.ipynb"]) == completion(ws, notebooks=["sub/2-More.ipynb"])
    assert measure(ws, relative_to=tmp_path)["notebooks"][0]["path"] == "WKSHP-Demo/1-Intro.ipynb"
    gone = measure(tmp_path / "nope")
    assert gone["total"] == 0 and "does not exist" in gone["error"]


def test_a_notebook_that_needs_too_much_memory_is_reported_not_parsed(tmp_path):
    """``[{},{},…]`` costs ~25 times its size parsed; the worker's address space is bounded."""
    from wod_jupyterhub.seats.completion_worker import measure

    ws = tmp_path / "WKSHP-Mem"
    ws.mkdir()
    n = 8 * 1024 * 1024  # 24 MiB of "{}," -> about 600 MiB of dicts
    (ws / "big.ipynb").write_bytes(b'{"nbformat": 4, "cells": [' + b"{}," * n + b"{}]}")
    write_nb(ws / "good.ipynb", [code("a", 1), code("b")])
    got = measure(ws, memory_bytes=256 * 1024 * 1024)
    by_path = {e["path"]: e for e in got["notebooks"]}
    assert "memory" in by_path["big.ipynb"]["error"]
    assert (got["executed"], got["total"]) == (1, 2) and by_path["good.ipynb"]["error"] is None


def test_the_bounds_per_notebook_and_per_folder(tmp_path):
    from wod_jupyterhub.seats.completion_worker import measure

    ws = tmp_path / "WKSHP-Sizes"
    for i in range(4):
        write_nb(ws / f"{i}.ipynb", [code("x" * 1000, 1)] * 10)
    size = (ws / "0.ipynb").stat().st_size
    got = measure(ws, max_notebook_bytes=size - 1)
    assert all("too large to read" in e["error"] for e in got["notebooks"])
    got = measure(ws, max_total_bytes=size * 2 + 10)
    assert [e["error"] is None for e in got["notebooks"]] == [True, True, False, False]
    assert "in all" in got["notebooks"][2]["error"] and got["total"] == 20


def test_a_worker_that_fails_is_reported(tmp_path):
    from wod_jupyterhub.seats import completion_worker
    from wod_jupyterhub.seats.completion_worker import measure

    ws = tmp_path / "WKSHP-Demo"
    write_nb(ws / "1-Intro.ipynb", [code("a", 1)])
    got = measure(ws, timeout=0)
    assert (got["ratio"], got["total"], got["notebooks"]) == (0, 0, []) and "more than 0 s" in got["error"]
    # A kept worker that died in between is reported once, then replaced.
    assert measure(ws, memory_bytes=512 * 1024 * 1024)["ratio"] == 100
    (worker,) = completion_worker._idle[512 * 1024 * 1024]
    worker.proc.kill()
    worker.proc.wait()
    got = measure(ws, memory_bytes=512 * 1024 * 1024)
    assert got["ratio"] == 0 and "the worker failed" in got["error"]
    assert measure(ws, memory_bytes=512 * 1024 * 1024)["ratio"] == 100
