"""Repair a notebook the way Jupyter copes with it on load, so that it validates."""

from __future__ import annotations

import copy
import json
import os
import warnings
from functools import lru_cache

#: cell types the schema knows; others are left to validation to judge
_CELL_TYPES = ("code", "markdown", "raw")


@lru_cache(maxsize=None)
def _schema(minor: int) -> dict | None:
    import nbformat.v4 as v4

    name = v4.nbformat_schema.get((4, minor))
    if name is None:
        return None
    with open(os.path.join(os.path.dirname(v4.__file__), name), encoding="utf-8") as f:
        return json.load(f)


def repair(nb: dict) -> tuple[dict, list[str]]:
    """A repaired deep copy of ``nb`` and what was changed, as phrases (empty: nothing to do).

    Raises ValueError when ``nb`` is not a notebook this can work on (not
    nbformat 4, no list of cells): those are for validation to refuse.
    """
    from nbformat.validator import normalize

    minor = nb.get("nbformat_minor") if isinstance(nb, dict) else None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or type(minor) is not int or not isinstance(nb.get("cells"), list):
        raise ValueError("not an nbformat 4 notebook")
    schema = _schema(minor)
    if schema is None:
        raise ValueError(f"no schema for nbformat 4.{minor}")
    nb = copy.deepcopy(nb)
    changes: list[str] = []
    definitions = schema.get("definitions", {})
    # Keys the schema forbids first: nbformat's normalisation only looks at metadata.
    extra_top = sorted(set(nb) - set(schema.get("properties", {})))
    for key in extra_top:
        del nb[key]
    if extra_top:
        changes.append(f"removed {', '.join(extra_top)} at the top")
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") not in _CELL_TYPES:
            continue
        allowed = definitions.get(f"{cell['cell_type']}_cell", {}).get("properties")
        if allowed is None:
            continue
        extra = sorted(set(cell) - set(allowed))
        for key in extra:
            del cell[key]
        if extra:
            changes.append(f"removed {', '.join(extra)} from {cell['cell_type']} cell {i + 1}")
        if "metadata" not in cell:
            cell["metadata"] = {}
            changes.append(f"added the missing metadata of cell {i + 1}")
        if cell["cell_type"] == "code":
            for key, empty in (("outputs", []), ("execution_count", None)):
                if key not in cell:
                    cell[key] = empty
                    changes.append(f"added the missing {key} of cell {i + 1}")
    had_ids = sum(1 for c in nb["cells"] if isinstance(c, dict) and "id" in c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MissingIDFieldWarning, DuplicateCellId: we report them ourselves
        count, nb = normalize(nb, 4, minor, strip_invalid_metadata=True)
    added = sum(1 for c in nb["cells"] if isinstance(c, dict) and "id" in c) - had_ids
    if added:
        changes.append(f"added {added} missing cell id{'s' if added > 1 else ''}")
    if count > added:
        changes.append(f"fixed {count - added} duplicate cell id(s) or invalid metadata key(s)")
    return nb, changes
