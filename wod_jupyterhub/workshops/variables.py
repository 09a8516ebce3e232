"""Template variables: what a workshop's templates may print, in layers (see ``template_variables``)."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

from .. import errors
from .catalog import read_meta


def template_variables(
    wod,
    workshop,
    student: int,
    password: str,
    modews: str = "WKSHP",
    hook_vars: dict | None = None,
    hostname: str | None = None,
) -> dict:
    """The variables a workshop's templates see, later layers winning, plus Ansible's ``hostvars``.

    The layers: ``c.Wod.variables``, then ``variables_<WKSHP>.yml`` of ``c.Wod.variables_dirs``,
    then what the create hook wrote (``hook_vars``), then the seat's own (student, password, ...).
    """
    if modews not in ("WKSHP", "CHLG"):
        raise errors.BadRequest(f"MODEWS must be WKSHP or CHLG, not {modews!r}.")
    variables: dict = {}
    variables.update(wod.variables)
    for folder in wod.variables_dirs:
        path = Path(folder) / f"variables_{workshop.name}.yml"
        if path.is_file():
            try:
                data = read_meta(path)
            except (ValueError, OSError) as e:
                raise errors.Unprocessable(f"Variables file {path} cannot be read: {e}", code="bad_variables") from None
            variables.update(data)
    if hook_vars:
        variables.update(hook_vars)
    students_root = str(wod.students_root)
    variables.update(
        STDID=student,
        PASSSTU=password,
        WORKSHOP=workshop.name,
        CHALLENGE=modews == "CHLG",
        MODEWS=modews,
        DIR="",
        WODUSER=wod.variables.get("WODUSER") or _user(),
        WODSTUDDIR=students_root,
        STDDIR=students_root,
    )
    host = hostname or wod.variables.get("inventory_hostname") or socket.gethostname()
    variables["inventory_hostname"] = host
    variables["hostvars"] = {host: dict(variables)}
    return variables


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())
