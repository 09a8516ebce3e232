"""Templating: Jinja2 in a sandbox, and the check that a rendered notebook is still a notebook."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from json.encoder import encode_basestring
from pathlib import Path

import jinja2
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from .. import errors

log = logging.getLogger(__name__)

TEMPLATED_SUFFIXES = (".ipynb", ".py", ".sh", ".yaml", ".src", ".tf", ".env")
TEMPLATED_NAMES = ("Variables.ps1",)

_JINJA_MARKS = ("{{", "{%", "{#")
_NEEDS_JSON_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'|no element '?([^']+?)'?$")


def is_templated(name: str) -> bool:
    """Whether a workshop file named ``name`` is a Jinja2 template (a notebook, a text file) rather than copied as it is."""
    if name.endswith("-checkpoint.ipynb"):
        return False
    return name.endswith(TEMPLATED_SUFFIXES) or name in TEMPLATED_NAMES


class RenderError(errors.Unprocessable):
    """A workshop that will not render; the message names the file, the line and the variable when known."""

    code = "render_failed"

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, variable: str | None = None):
        super().__init__(message)
        self.file = file
        self.line = line
        self.variable = variable

    def to_json(self) -> dict:
        d = super().to_json()
        d.update({k: v for k, v in (("file", self.file), ("line", self.line), ("variable", self.variable)) if v is not None})
        return d


def _clause(text) -> str:
    """A message as the tail of our own sentence: no doubled final period."""
    return str(text).strip().rstrip(".")


def _json_text(value) -> str:
    """Print a value as JSON string content: quote, backslash and control characters escaped, nothing else.

    ``str()`` of a StrictUndefined raises, which is how an undefined variable
    still fails in notebooks. A value without such characters is printed
    exactly as Ansible prints it.
    """
    text = value if type(value) is str else str(value)
    if _NEEDS_JSON_ESCAPE.search(text) is None:
        return text
    return encode_basestring(text)[1:-1]


def _dump_notebook(nb: dict) -> str:
    # nbformat's own on-disk style (nbformat.v4.nbjson.JSONWriter)
    return json.dumps(nb, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False) + "\n"


def _clear(nb: dict) -> None:
    for cell in nb.get("cells") or ():
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str):
    return json.loads(text, parse_constant=_reject_constant)


def validate_notebook(nb) -> str | None:
    """Full nbformat schema validation; the first problem as a sentence, or None. Slow: not for the hot path."""
    from nbformat.validator import get_validator

    if not isinstance(nb, dict):
        return "it is not a JSON object"
    major, minor = nb.get("nbformat"), nb.get("nbformat_minor")
    if major != 4 or not isinstance(minor, int) or isinstance(minor, bool):
        return f"nbformat {major}.{minor} is not supported (nbformat 4 only)"
    validator = get_validator(4, minor)
    if validator is None:
        return f"no schema for nbformat 4.{minor}"
    for err in validator.iter_errors(nb):
        where = "/".join(str(p) for p in getattr(err, "path", None) or getattr(err, "absolute_path", ()) or ())
        return f"{err.message}" + (f" (at {where})" if where else "")
    return None


_STR_ONLY = {str}


def _repaired(nb):
    """(nb repaired as Jupyter copes with it on load, what changed) when that makes it valid; else None."""
    from .repair import repair

    try:
        fixed, changes = repair(nb)
    except ValueError:
        return None
    if not changes or validate_notebook(fixed) is not None:
        return None
    return fixed, changes


class _Skeleton:
    """A validated notebook with the one part a render may change, cell sources, left out.

    Why comparing against it is enough, so full schema validation runs once
    per template file instead of once per seat: the nbformat schema lets a
    cell's ``source`` be any string or list of strings, and constrains
    everything else. The template's notebook (outputs cleared when
    clearing) was fully validated once. A rendered notebook that parses as
    JSON and equals it everywhere but in cell sources, each still a string
    or a list of strings, is therefore valid too: the schema cannot tell it
    from the validated one. Anything else -- a variable printed into
    metadata, a block that adds or merges cells -- fails the comparison and
    falls back to full validation for that render, so correctness never
    depends on where a template author put their tags. The comparison is
    a few dict equality tests per cell, in C.
    """

    __slots__ = ("top", "cells")

    def __init__(self, nb: dict):
        self.top = {k: v for k, v in nb.items() if k != "cells"}
        self.cells = [{k: v for k, v in c.items() if k != "source"} for c in nb["cells"]]

    def matches(self, nb) -> bool:
        if type(nb) is not dict:
            return False
        cells = nb.get("cells")
        if type(cells) is not list or len(cells) != len(self.cells) or len(nb) != len(self.top) + 1:
            return False
        top = self.top
        for k, v in nb.items():
            if k != "cells" and (k not in top or top[k] != v):
                return False
        for cell, ref in zip(cells, self.cells):
            if type(cell) is not dict or len(cell) != len(ref) + 1:
                return False
            src = cell.get("source", 0)
            if type(src) is not str and (type(src) is not list or not set(map(type, src)) <= _STR_ONLY):
                return False
            for k, v in cell.items():
                if k != "source" and (k not in ref or ref[k] != v):
                    return False
        return True


#: What stands for a tag in ``_tags_only_in_sources``: not JSON outside a string, nor after a partial escape in one.
_TAG_MARK = "Z"


def _tags_only_in_sources(env, text: str, skeleton: _Skeleton) -> bool:
    """Whether every render of notebook template ``text`` is valid and keeps its skeleton, so needs no check.

    True when the template has only ``{{ }}`` prints and ``{# #}`` comments
    (no ``{% %}`` block: it could drop or repeat the text between its tags,
    JSON structure included), and its text with each tag replaced by one
    letter still parses and matches ``skeleton``. That letter is no JSON
    outside a string, nor the end of a partial escape (a backslash, or a
    backslash and ``u00``), so each tag sits inside a string, between two
    whole characters of it; the match puts those strings in cell sources. A
    render puts there only what ``_json_text`` printed: whole characters of
    JSON string content. So every render is that notebook with other source
    strings: valid JSON matching the skeleton. Checking it again on every
    seat cost eight times the render itself.
    """
    parts = []
    for _line, kind, value in env.lex(text):
        if kind == "data":
            parts.append(value)  # as the template prints it: the lexer applies ``{{-``/``-}}`` here
        elif kind in ("variable_begin", "comment_begin"):
            parts.append(_TAG_MARK)
        elif kind.endswith("_begin"):
            return False  # a block, a raw block, a line statement
    try:
        return skeleton.matches(_parse_json("".join(parts)))
    except ValueError:
        return False


class _Prepared:
    """One template file, compiled once, with what the hot path needs to check its output."""

    __slots__ = (
        "template", "source", "notebook", "skeleton", "cleared_before", "clear_after", "repaired", "tags_in_sources",
    )

    def __init__(self):
        self.template = None
        self.source = None  # the file's text, to re-render for errors named at the file's own lines
        self.notebook = False
        self.skeleton = None
        self.cleared_before = False
        self.clear_after = False
        # What nbrepair.repair changed so that the notebook validates (a warning for the admin), or None.
        self.repaired = None
        # Every render is a valid notebook matching the skeleton (``_tags_only_in_sources``): nothing to check.
        self.tags_in_sources = False


class Renderer:
    """Renders workshop templates; compiles each file once and caches it by path, mtime and size.

    A service process keeps one Renderer, so it pays the compile and the
    one-off notebook validation once per template file, not once per seat.
    """

    def __init__(self, strict_undefined: bool = True, clear_outputs: bool = True, kernels=None):
        self.strict_undefined = strict_undefined
        self.clear_outputs = clear_outputs
        # A kernels.Kernels: each notebook gets the kernel metadata JupyterLab would write on open.
        self.kernels = kernels
        undefined = jinja2.StrictUndefined if strict_undefined else jinja2.Undefined
        opts = dict(trim_blocks=True, keep_trailing_newline=True, undefined=undefined, autoescape=False)
        self.text_env = SandboxedEnvironment(**opts)
        self.json_env = SandboxedEnvironment(finalize=_json_text, **opts)
        self._cache: dict = {}
        self._lock = threading.Lock()

    # -- compiling ------------------------------------------------------

    def _compile(self, env, source: str, path: Path, rel: str):
        try:
            code = env.compile(source, name=rel, filename=str(path))
        except TemplateSyntaxError as e:
            raise RenderError(
                f"{rel}, line {e.lineno}: template syntax error: {_clause(e.message)}.", file=rel, line=e.lineno
            ) from None
        return env.template_class.from_code(env, code, env.make_globals(None), None)

    def prepare(self, path: Path, rel: str) -> _Prepared:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
        prepared = self._cache.get(key)
        if prepared is not None:
            return prepared
        try:
            source = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RenderError(f"{rel} is not UTF-8 text ({e.reason}), so it cannot be rendered.", file=rel) from None
        p = _Prepared()
        p.source = source
        if not rel.endswith(".ipynb"):
            p.template = self._compile(self.text_env, source, path, rel)
        else:
            p.notebook = True
            self._prepare_notebook(p, source, path, rel)
        with self._lock:
            # drop older versions of the same file
            for old in [k for k in self._cache if k[0] == key[0]]:
                del self._cache[old]
            self._cache[key] = p
        return p

    def _prepare_notebook(self, p: _Prepared, source: str, path: Path, rel: str) -> None:
        try:
            nb = _parse_json(source)
        except ValueError:
            nb = None  # tags outside JSON strings: only the rendered text can be judged
        text = source
        if nb is not None and type(nb) is dict and type(nb.get("cells")) is list:
            if self.clear_outputs:
                removed = json.dumps(
                    [(c.get("outputs"), c.get("execution_count")) for c in nb["cells"] if isinstance(c, dict)]
                )
                if not any(m in removed for m in _JINJA_MARKS):
                    # Clearing commutes with rendering when no tag lives in what
                    # is cleared, so clear once here instead of on every seat.
                    _clear(nb)
                    text = _dump_notebook(nb)
                    p.cleared_before = True
                else:
                    _clear(nb)
                    p.clear_after = True
            if validate_notebook(nb) is not None:
                fixed = _repaired(nb)
                if fixed is not None:
                    # Once per template: the repaired notebook is the template from now on. Repairing
                    # commutes with rendering (it drops keys and adds ids; tags live in strings).
                    nb, p.repaired = fixed
                    text = _dump_notebook(nb)
                    p.cleared_before = True  # the template is a re-serialization: errors are named at the source's lines
                    log.warning("%s: repaired as Jupyter does on load: %s", rel, "; ".join(p.repaired))
            if self.kernels is not None and not any(m in json.dumps(nb.get("metadata")) for m in _JINJA_MARKS):
                # Once per template, like the repair: the notebook opens as its kernel would leave it.
                if self.kernels.fill(nb):
                    text = _dump_notebook(nb)
                    p.cleared_before = True  # a re-serialization, as above
            if validate_notebook(nb) is None and all(type(c) is dict for c in nb["cells"]):
                p.skeleton = _Skeleton(nb)
        elif self.clear_outputs:
            p.clear_after = True
        try:
            p.template = self._compile(self.json_env, text, path, rel)
        except RenderError:
            if text is source:
                raise
            self._compile(self.json_env, source, path, rel)  # raises, named at the file's own lines
            raise
        if p.skeleton is not None and not p.clear_after:
            p.tags_in_sources = _tags_only_in_sources(self.json_env, text, p.skeleton)

    # -- rendering ------------------------------------------------------

    def render_file(self, path: Path, rel: str, variables: dict) -> str:
        """Render one templated file; raise RenderError naming file, line and variable."""
        p = self.prepare(path, rel)
        try:
            out = p.template.render(variables)
        except Exception as e:  # every template failure becomes one sentence
            if p.cleared_before:
                # Report at the file's own line numbers, not the re-serialized template's.
                env = self.json_env
                original = self._compile(env, p.source, path, rel)
                try:
                    original.render(variables)
                except Exception as e2:
                    raise self._explain(e2, path, rel, variables) from None
            raise self._explain(e, path, rel, variables) from None
        if not p.notebook or p.tags_in_sources:
            return out
        try:
            nb = _parse_json(out)
        except ValueError as e:
            raise RenderError(f"{rel} is not a valid notebook once rendered: invalid JSON ({e}).", file=rel) from None
        if p.clear_after:
            _clear(nb)
        if p.skeleton is None or not p.skeleton.matches(nb):
            problem = validate_notebook(nb)
            if problem:
                # Tags outside JSON strings: only the rendered notebook can be repaired, on every render.
                fixed = _repaired(nb)
                if fixed is None:
                    raise RenderError(f"{rel} is not a valid notebook once rendered: {problem}.", file=rel)
                nb, p.repaired = fixed
                return _dump_notebook(nb)
        if p.clear_after:
            out = _dump_notebook(nb)
        return out

    def _explain(self, e: Exception, path: Path, rel: str, variables: dict = ()) -> RenderError:
        if isinstance(e, RenderError):
            return e
        line = None
        tb = e.__traceback__
        fname = str(path)
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == fname:
                line = tb.tb_lineno
            tb = tb.tb_next
        if isinstance(e, TemplateSyntaxError):
            line = e.lineno
        where = f"{rel}, line {line}" if line else rel
        if isinstance(e, SecurityError):
            return RenderError(f"{where}: refused by the template sandbox: {_clause(e)}.", file=rel, line=line)
        if isinstance(e, UndefinedError):
            msg = str(e)
            m = _UNDEFINED_NAME.search(msg)
            var = next((g for g in m.groups() if g), None) if m else None
            if var:
                return RenderError(f"{where}: variable {var} is undefined{_defined_names(variables)}.", file=rel, line=line, variable=var)
            return RenderError(f"{where}: {_clause(msg)}.", file=rel, line=line)
        if isinstance(e, TemplateSyntaxError):
            return RenderError(f"{where}: template syntax error: {_clause(e.message)}.", file=rel, line=line)
        return RenderError(f"{where}: the template failed: {type(e).__name__}: {_clause(e)}.", file=rel, line=line)


def _defined_names(variables) -> str:
    """``; defined: A, B, …``: what a template could have meant (a first try writes ``{{ student }}``)."""
    names = sorted(k for k in variables if isinstance(k, str) and not k.startswith("_"))
    return f"; the variables defined are {', '.join(names)}" if names else ""


_renderers: dict = {}


def default_renderer(wod) -> Renderer:
    """One warm Renderer per setting, shared by every provisioning of this process."""
    key = (bool(wod.strict_undefined), bool(wod.clear_outputs), wod.kernel_python)
    r = _renderers.get(key)
    if r is None:
        from .kernels import Kernels

        kernels = Kernels(key[2]) if key[2] else None
        r = _renderers.setdefault(key, Renderer(strict_undefined=key[0], clear_outputs=key[1], kernels=kernels))
    return r
