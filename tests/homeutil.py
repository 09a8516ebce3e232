"""What a students folder holds besides the homes, for the tests and benches that look at stages and leftovers."""

import os
from pathlib import Path

from wod_jupyterhub.seats.homes import is_side_name


def side_entries(students_root) -> list[str]:
    """Everything in the seats' side folders, as ``.student<N>/<name>``, and any other hidden entry of the folder.

    An empty side folder is no leftover: it stays, as the seat's place for its next stage or home.
    """
    root = Path(students_root)
    try:
        hidden = sorted(p for p in root.iterdir() if p.name.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for p in hidden:
        if p.is_dir() and not p.is_symlink() and is_side_name(p.name):
            out.extend(f"{p.name}/{name}" for name in sorted(os.listdir(p)))
        else:
            out.append(p.name)
    return out


def stages(students_root) -> list[str]:
    """The staged seats' folders, as ``.student<N>/staged-<key>``."""
    return [n for n in side_entries(students_root) if "/staged-" in n]
