"""The workshop catalog: every ``WKSHP-*`` folder of the notebooks roots and its ``wod.yml``."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import errors
from ..config import README_NOTEBOOK, check_student_number
from ..limits import Limits, limits_from_meta
from . import compiled, steps

log = logging.getLogger(__name__)

WORKSHOP_NAME = re.compile(r"^(WKSHP|CHLG)-[A-Za-z0-9._-]+$")
#: the default of ``c.Wod.readme_notebook``, for callers without settings
META_FILE = "wod.yml"

#: wod.yml keys read as booleans; matched case-insensitively because the real
#: files spell ``monoAppliance`` both ways (``monoappliance`` in Docker101).

# The original read ``key<TABS/SPACES>:<TABS/SPACES>value``; YAML forbids tabs there (and
# after a value), so the whitespace around such a key's colon becomes one space.
_KEY_LINE = re.compile(r"^( *(?:- +)?)([^\s#:'\"-][^:'\"\t\n]*?|-[^\s:'\"][^:'\"\t\n]*?)([ \t]*):(?:([ \t]*)(.*?))?[ \t]*$", re.M)
_DASH_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")
_COMMA_RANGE = re.compile(r"^\s*\[?\s*(-?\d+)\s*,\s*(-?\d+)\s*\]?\s*$")


def parse_workshop_name(name: str) -> tuple[str, str]:
    """``CHLG-X`` → ``("WKSHP-X", "CHLG")``; ``WKSHP-X`` → ``("WKSHP-X", "WKSHP")``.

    The name becomes a folder name, so anything that could walk the
    filesystem is refused before it gets near a path.
    """
    if not isinstance(name, str) or not name.strip():
        raise errors.BadRequest("A workshop name is required, such as WKSHP-Python101.", code="bad_workshop")
    if os.path.isabs(name) or name.startswith(("/", "\\", "~")):
        raise errors.BadRequest(
            f"Workshop name {name!r} is an absolute path; give a folder name such as WKSHP-Python101.",
            code="bad_workshop",
        )
    if "/" in name or "\\" in name or ".." in name:
        raise errors.BadRequest(
            f"Workshop name {name!r} may not contain '/', '\\' or '..'; give a folder name such as WKSHP-Python101.",
            code="bad_workshop",
        )
    if not WORKSHOP_NAME.fullmatch(name):
        raise errors.BadRequest(
            f"Workshop name {name!r} must start with WKSHP- or CHLG- followed by letters, digits, '.', '_' or '-'.",
            code="bad_workshop",
        )
    prefix, rest = name.split("-", 1)
    return f"WKSHP-{rest}", prefix


@dataclass
class Workshop:
    """One ``WKSHP-*`` (or ``CHLG-*``) folder of a notebooks root: its ``wod.yml`` read, and what is wrong with it."""
    name: str
    path: Path
    root: Path
    meta: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    range: tuple[int, int] | None = None
    active: bool = False
    reset: bool = False
    capacity: int | None = None
    mono_appliance: bool = False
    multi_appliance: bool = False
    #: ``ldap: true``: every rotation of a seat's password sets it in the directory too (``directory.py``)
    ldap: bool = False
    #: ``compile:``: the scripts given to the seats compiled, runnable but unreadable (``compiled.py``)
    compile: tuple[str, ...] = ()
    #: ``duration:`` hours a seat lasts (its CREATE's ``ends_at``); None: the configured default
    duration: float | None = None
    #: the seat limits the workshop asks for in ``limits:`` (unset fields: the hub's defaults)
    limits: Limits = field(default_factory=Limits)
    #: ``steps:``: the steps whose checks verify a participant's work (``steps.py``)
    steps: tuple = ()
    #: problems that make the workshop unusable (no wod.yml, no range, no
    #: ReadMeFirst); overlaps and capacities are reported but do not block,
    #: since the real corpus has them and the original served those workshops.
    blocking: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """Whether the workshop can be given to seats (no blocking problem)."""
        return not self.blocking

    def problem(self, sentence: str, blocking: bool = False) -> None:
        """Note a problem of the workshop; a ``blocking`` one makes it unusable."""
        self.problems.append(sentence)
        if blocking:
            self.blocking.append(sentence)

    def to_json(self) -> dict:
        """The workshop as ``api/workshops`` and ``wod workshops`` show it."""
        return {
            "name": self.name,
            "title": self.meta.get("name"),
            "path": str(self.path),
            "root": str(self.root),
            "range": list(self.range) if self.range else None,
            "active": self.active,
            "reset": self.reset,
            "capacity": self.capacity,
            "mono_appliance": self.mono_appliance,
            "multi_appliance": self.multi_appliance,
            "ldap": self.ldap,
            "duration": self.duration,
            "compile": list(self.compile),
            "limits": self.limits.to_json(),
            "steps": [s.to_json() for s in self.steps],
            "valid": self.valid,
            "problems": list(self.problems),
            "meta": _jsonable(self.meta),
        }


def _jsonable(value):
    """wod.yml may hold dates or other YAML types JSON does not know."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _parse_duration(meta: dict, ws: Workshop) -> float | None:
    """``duration:`` in hours, a number above 0; anything else is a problem (not blocking) and the default applies."""
    value = meta.get("duration")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 24 * 366:
        ws.problem(f"duration must be a number of hours above 0, not {value!r}; the configured default applies.")
        return None
    return float(value)


def _parse_range(value, ws: Workshop):
    """``[a, b]``, the documented ``[a-b]`` (YAML reads ``["a-b"]``), or the strings ``"a-b"`` / ``"a,b"``."""
    pair = None
    if isinstance(value, list) and len(value) == 2:
        pair = value
    elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        m = _DASH_RANGE.match(value[0])
        pair = list(m.groups()) if m else None
    elif isinstance(value, str):
        m = _DASH_RANGE.match(value) or _COMMA_RANGE.match(value)
        pair = list(m.groups()) if m else None
    if pair is None:
        ws.problem(f"range must be written [min, max] (or [min-max]), not {value!r}.", blocking=True)
        return None
    ints = []
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (int, str)) or (isinstance(v, str) and not re.fullmatch(r"\s*-?\d+\s*", v)):
            ws.problem(f"range bounds must be integers, not {v!r} in {value!r}.", blocking=True)
            return None
        ints.append(int(v))
    lo, hi = ints
    if lo < 1:
        ws.problem(f"range [{lo}, {hi}] must start at student 1 or more.", blocking=True)
        return None
    if lo > hi:
        ws.problem(f"range [{lo}, {hi}] is reversed: its minimum is larger than its maximum.", blocking=True)
        return None
    return lo, hi


def _parse_bool(meta: dict, key: str, ws: Workshop) -> bool:
    lowered = {str(k).lower(): k for k in meta}
    real = lowered.get(key.lower())
    if real is None:
        return False
    value = meta[real]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    ws.problem(f"{real} must be true or false, not {value!r}.")
    return False


#: A wod.yml (or variables file) larger than this is a problem, not read: real ones are a few hundred bytes.
MAX_META_BYTES = 256 * 1024


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases.

    An alias (``*a``) repeats the node of its anchor (``&a``); nested, they
    grow exponentially (431 bytes became a 55 MiB catalog answer that held
    the service for seconds). No real wod.yml or variables file needs one.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"an alias (*{event.anchor}) is not allowed: write the value out", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text):
    """``yaml.safe_load`` without aliases (see :class:`NoAliasLoader`)."""
    return yaml.load(text, Loader=NoAliasLoader)  # a SafeLoader subclass: no arbitrary objects


def _untab(text: str) -> str:
    """Tabs in the whitespace between a key and its value (or after it) read as one space."""

    def fix(m):
        indent, key, before, between, value = m.groups()
        if "\t" not in m.group(0):
            return m.group(0)
        return f"{indent}{key}:" + (f" {value}" if value else "")

    return _KEY_LINE.sub(fix, text)


def read_meta(path: Path) -> dict:
    """Parse one wod.yml leniently; raise ValueError with a sentence when it cannot be read."""
    with open(path, "rb") as f:
        raw = f.read(MAX_META_BYTES + 1)
    if len(raw) > MAX_META_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_META_BYTES} bytes; it is not read.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path.name} is not UTF-8 text ({e.reason}).") from None
    text = _untab(text)
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path.name} is not valid YAML{where}: {problem}.") from None
    if data is None:
        raise ValueError(f"{path.name} is empty.")
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must be a mapping of keys to values, not a {type(data).__name__}.")
    return data


def load_workshop(folder: Path, root: Path, readme: str = README_NOTEBOOK) -> Workshop:
    ws = Workshop(name=folder.name, path=folder, root=root)
    if folder.is_symlink():
        try:
            folder.resolve(strict=True).relative_to(root.resolve())
        except (OSError, ValueError):
            ws.problem(f"{folder.name} is a symlink leading out of the notebooks root {root}; it is ignored.", blocking=True)
            return ws
    meta_path = folder / META_FILE
    if not meta_path.is_file() or (meta_path.is_symlink() and not _inside(meta_path, root)):
        ws.problem(f"{META_FILE} is missing: every workshop needs one.", blocking=True)
    else:
        try:
            ws.meta = read_meta(meta_path)
        except (ValueError, OSError) as e:
            ws.problem(str(e), blocking=True)
    meta = ws.meta
    if ws.meta:
        if not isinstance(meta.get("name"), str) or not meta.get("name", "").strip():
            ws.problem("name is missing or not a text.")
        if "range" not in meta:
            ws.problem("range is missing: write range: [min, max].", blocking=True)
        else:
            ws.range = _parse_range(meta["range"], ws)
        ws.active = _parse_bool(meta, "active", ws)
        ws.reset = _parse_bool(meta, "reset", ws)
        ws.ldap = _parse_bool(meta, "ldap", ws)
        ws.duration = _parse_duration(meta, ws)
        for key in ("varpass", "beta", "show_readme"):
            _parse_bool(meta, key, ws)
        ws.compile = compiled.scripts_of(meta, ws)
        ws.steps = steps.steps_of(meta, ws)
        ws.mono_appliance = _parse_bool(meta, "monoAppliance", ws)
        ws.multi_appliance = _parse_bool(meta, "multiAppliance", ws)
        ws.limits, problems = limits_from_meta(meta.get("limits"))
        for sentence in problems:
            ws.problem(sentence)
        if ws.mono_appliance and ws.multi_appliance:
            ws.problem("monoAppliance and multiAppliance are both true; choose one.")
        cap = meta.get("capacity")
        if cap is not None:
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                ws.problem(f"capacity must be a non-negative integer, not {cap!r}.")
            else:
                ws.capacity = cap
                if ws.range and cap > ws.range[1] - ws.range[0] + 1:
                    ws.problem(
                        f"capacity {cap} exceeds the {ws.range[1] - ws.range[0] + 1} students of range "
                        f"[{ws.range[0]}, {ws.range[1]}]."
                    )
    path = folder / readme
    if not path.is_file() or (path.is_symlink() and not _inside(path, root)):
        ws.problem(f"{readme} is missing: it is the notebook that opens first.", blocking=True)
    return ws


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(root.resolve())
        return True
    except (OSError, ValueError):
        return False


class Catalog:
    """The workshops of one or more notebooks roots, by folder name."""

    def __init__(self, workshops: dict[str, Workshop] | None = None):
        self.workshops = dict(workshops or {})

    def get(self, name: str) -> Workshop:
        """The workshop of ``name`` (``WKSHP-X`` or ``CHLG-X``); ``NotFound`` when no root has it."""
        folder, _mode = parse_workshop_name(name)
        try:
            return self.workshops[folder]
        except KeyError:
            raise errors.NotFound(f"No workshop {folder} in the notebooks roots.", code="no_workshop") from None

    def check_student(self, workshop: Workshop | str, n: int, wod=None) -> None:
        """Student ``n`` may take ``workshop``: it is in the workshop's range (and, given ``wod``, this backend's)."""
        ws = workshop if isinstance(workshop, Workshop) else self.get(workshop)
        if wod is not None:
            wod.check_student(n)
        else:
            check_student_number(n)
        if ws.range is None:
            raise errors.Unprocessable(
                f"Workshop {ws.name} has no usable range in its {META_FILE}, so no student can take it.",
                code="student_out_of_range",
            )
        lo, hi = ws.range
        if not lo <= n <= hi:
            raise errors.Unprocessable(
                f"Student {n} is outside the range [{lo}, {hi}] of workshop {ws.name}.", code="student_out_of_range"
            )

    def to_json(self) -> list[dict]:
        """Every workshop as JSON, by folder name."""
        return [self.workshops[k].to_json() for k in sorted(self.workshops)]

    def _report_overlaps(self) -> None:
        ranged = sorted((w for w in self.workshops.values() if w.range), key=lambda w: (w.range, w.name))
        for i, a in enumerate(ranged):
            for b in ranged[i + 1 :]:
                if b.range[0] > a.range[1]:
                    break  # sorted by start: nothing later can overlap a
                for x, y in ((a, b), (b, a)):
                    x.problem(
                        f"range [{x.range[0]}, {x.range[1]}] overlaps {y.name}'s range [{y.range[0]}, {y.range[1]}]."
                    )


def find_workshop(roots: list, folder: str, prefer_private: bool = False, readme: str = README_NOTEBOOK) -> Workshop | None:
    """The one workshop ``folder`` (``WKSHP-<Name>``) of ``roots``, as :func:`load_catalog` would pick it, or None."""
    roots = [Path(r).expanduser().absolute() for r in roots]
    for root in reversed(roots) if prefer_private else roots:
        if WORKSHOP_NAME.fullmatch(folder) and (root / folder).is_dir():
            return load_workshop(root / folder, root, readme)
    return None


def load_catalog(roots: list, prefer_private: bool = False, readme: str = README_NOTEBOOK) -> Catalog:
    """Load every ``WKSHP-*`` folder of ``roots`` (public first); never raises for a bad workshop."""
    roots = [Path(r).expanduser().absolute() for r in roots]
    found: dict[str, Workshop] = {}
    order = list(reversed(roots)) if prefer_private else roots
    for root in order:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as e:
            log.warning("notebooks root %s cannot be read: %s", root, e)
            continue
        for entry in entries:
            if not entry.name.startswith("WKSHP-") or not entry.is_dir():
                continue
            if entry.name in found:
                continue  # the first root wins, as the original did
            if not WORKSHOP_NAME.fullmatch(entry.name):
                log.warning("ignoring folder %s: not a valid workshop name", entry.path)
                continue
            found[entry.name] = load_workshop(Path(entry.path), root, readme)
    catalog = Catalog(found)
    catalog._report_overlaps()
    return catalog


class CatalogCache:
    """The catalog of ``wod.notebooks`` for a long-running process.

    Read again when a notebooks root, a workshop folder or a ``wod.yml``
    changed on disk (a few ``stat`` calls per request: a workshop added,
    removed or edited is seen by the next request), and at the latest once
    older than ``ttl`` seconds.
    """

    def __init__(self, wod, ttl: float = 5.0):
        self.wod = wod
        self.ttl = ttl
        self._catalog: Catalog | None = None
        self._read_at = 0.0
        self._signature: tuple = ()

    def _stat_signature(self) -> tuple:
        paths = [Path(r) for r in self.wod.notebooks]
        if self._catalog is not None:
            for ws in self._catalog.workshops.values():
                paths += [ws.path, ws.path / META_FILE]
        signature = []
        for path in paths:
            try:
                st = os.stat(path)
                signature.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                signature.append(None)
        return tuple(signature)

    def get(self) -> Catalog:
        """The catalog, read again when its time is up or a notebooks root changed."""
        now = time.monotonic()
        if self._catalog is None or now - self._read_at > self.ttl or self._stat_signature() != self._signature:
            self._catalog = load_catalog(self.wod.notebooks, self.wod.prefer_private, self.wod.readme_notebook)
            self._read_at = now
            self._signature = self._stat_signature()
        return self._catalog

    def workshop(self, name: str) -> tuple[Workshop, str, str]:
        """(Workshop, folder, mode) for a requested ``WKSHP-``/``CHLG-`` name; NotFound if absent."""
        folder, mode = parse_workshop_name(name)
        return self.get().get(folder), folder, mode

    def workshop_or_none(self, name: str | None) -> tuple[Workshop | None, str | None, str]:
        """Like ``workshop``, but (None, folder or None, mode) for a name gone from the catalog or unusable."""
        if not name:
            return None, None, "WKSHP"
        try:
            folder, mode = parse_workshop_name(name)
        except errors.WodError:
            return None, None, "WKSHP"
        return self.get().workshops.get(folder), folder, mode
