"""The package's layers: every import, at the top or inside a function, goes down or sideways, never up,
and no two modules import each other, directly or around a loop. The README's "Where things live"
names every module where it is, in the order of the layers.

Run it alone: ``python -m tests.test_layers`` prints each import against the layers, or nothing.
"""

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wod_jupyterhub"

#: from the bottom up: a module may import its own layer and those below it
LAYERS = ("core", "store|lab", "workshops", "seats", "hub|service", "cli", "compat")
#: layers of one rank that never import each other: what runs in the hub and what runs in the service;
#: what runs in a participant's own server (lab) and the database, which that server never opens
SIBLINGS = {"hub": "service", "service": "hub", "lab": "store", "store": "lab"}
#: the deprecated top-level aliases of moved modules, above everything
COMPAT = {"wod_jupyterhub.auth", "wod_jupyterhub.spawner"}


def layer_of(module: str) -> str:
    """The layer of a module ``wod_jupyterhub.<...>``: its subpackage, or core for the top level."""
    if module in COMPAT:
        return "compat"
    parts = module.split(".")
    if len(parts) > 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "core"


def rank(layer: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if layer in names.split("|"))


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (migration scripts left out: Alembic loads them)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if "versions" in rel.parts:
            continue
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The package's modules ``name`` imports, wherever in the file (``from . import x`` counts as module x)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def against_layers(edges: dict) -> list[str]:
    """Each import that goes up a layer or across from the hub to the service (or back), in words."""
    wrong = []
    for importer, targets in sorted(edges.items()):
        mine = layer_of(importer)
        for target in sorted(targets):
            theirs = layer_of(target)
            if rank(theirs) > rank(mine) or SIBLINGS.get(mine) == theirs:
                wrong.append(f"{importer} ({mine}) imports {target} ({theirs})")
    return wrong


def cycles(edges: dict) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def test_every_module_has_a_layer():
    for name in modules():
        assert rank(layer_of(name)) >= 0


def test_no_import_goes_against_the_layers():
    assert against_layers(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def readme_paths() -> list[str]:
    """The package paths the README's "Where things live" table lists, in its order."""
    text = (PACKAGE.parent / "README.md").read_text()
    section = text[text.index("## Where things live") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"^\| `(wod_jupyterhub/[^`]*)`", section, re.M)


def test_the_readme_names_every_module_where_it_is_in_the_order_of_the_layers():
    listed = readme_paths()
    root = PACKAGE.parent
    assert [p for p in listed if not (root / p).exists()] == [], "listed but not in the tree"
    assert len(listed) == len(set(listed))
    expected = {f"{p.relative_to(root)}/" for p in PACKAGE.rglob("*") if p.is_dir() and (p / "__init__.py").exists()}
    expected |= {
        str(p.relative_to(root))
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts and (p.name != "__init__.py" or p.parent == PACKAGE)
    }
    expected -= {f"{PACKAGE.name}/store/migrations/versions/"}
    assert sorted(expected - set(listed)) == [], "in the tree but not in the README"
    layers = [rank(layer_of(p.rstrip("/").removesuffix(".py").replace("/", ".") + (".x" if p.endswith("/") else ""))) for p in listed]
    assert layers == sorted(layers), "the table follows the layers"


def test_every_path_of_the_package_named_in_the_repository_exists():
    # Docs, comments and docstrings that name a module by its path follow it when it moves.
    root = PACKAGE.parent
    texts = [root / "README.md", root / "jupyterhub_config.py", root / "setup.cfg", root / "Makefile", *root.glob("docs/*.md")]
    texts += [p for folder in ("wod_jupyterhub", "tests", "bench") for p in (root / folder).rglob("*.py")]
    wrong = []
    for text in texts:
        content = text.read_text()
        for path in re.findall(r"wod_jupyterhub/[\w/]*\w+\.(?:py|json|html)\b", content):
            if not (root / path).exists():
                wrong.append(f"{text.relative_to(root)} names {path}")
        for dotted in re.findall(r"\bwod_jupyterhub(?:\.\w+)+", content):
            parts = dotted.split(".")
            # the longest prefix that is a module; what follows it must be a module or a name in it
            n = max(i for i in range(1, len(parts) + 1) if _is_module(root, parts[:i]))
            if parts[n:n + 1] == ["share"] and n == 1 or n < len(parts) and parts[n].startswith("__"):
                continue  # setup.py ships share/ as wod_jupyterhub.share; a module's own dunders
            if n < len(parts) and not re.search(rf"\b{parts[n]}\b", _module_source(root, parts[:n])):
                wrong.append(f"{text.relative_to(root)} names {dotted}")
    assert wrong == []


def _is_module(root, parts) -> bool:
    path = root.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_source(root, parts) -> str:
    path = root.joinpath(*parts)
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def test_no_test_module_imports_another():
    # Shared helpers live in tests/*util.py (and conftest.py's fixtures), never in a test module.
    tests = PACKAGE.parent / "tests"
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            wrong += [f"{path.relative_to(tests)} imports {n}" for n in names if n.rpartition(".")[2].startswith(("test_", "conftest"))]
    assert wrong == []


def test_the_checks_catch_what_they_look_for():
    # The same functions on a made-up graph: an import upwards, one across, and a loop.
    edges = {
        "wod_jupyterhub.config": {"wod_jupyterhub.hub.auth"},
        "wod_jupyterhub.hub.auth": {"wod_jupyterhub.service.app"},
        "wod_jupyterhub.service.app": {"wod_jupyterhub.config"},
    }
    assert against_layers(edges) == [
        "wod_jupyterhub.config (core) imports wod_jupyterhub.hub.auth (hub)",
        "wod_jupyterhub.hub.auth (hub) imports wod_jupyterhub.service.app (service)",
    ]
    assert cycles(edges) == [sorted(edges)]


if __name__ == "__main__":
    edges = graph()
    problems = against_layers(edges) + [" <-> ".join(group) for group in cycles(edges)]
    print("\n".join(problems))
    sys.exit(1 if problems else 0)
