"""A participant's notebook as it is on disk, rendered read-only for the instructor: nothing of it is trusted.

The notebook is the participant's: any of its text may be a trap. Every
source and output is shown as escaped text; of rich outputs only PNG, JPEG
and GIF images are shown, as ``data:`` images whose bytes are checked to be
base64; HTML, SVG, JavaScript and Markdown outputs are shown as their
escaped source. The page is served with a Content-Security-Policy that
allows no script, no request, no form and no frame (``sandbox``), so even a
mistake here could run nothing.
"""

import base64
import binascii
import html
import json
import re

from ..seats.completion import read_under

#: the page's Content-Security-Policy: inline styles and data: images only, in a sandbox
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
#: largest notebook rendered (bytes)
MAX_BYTES = 16 * 1024 * 1024
#: characters of one text shown before it is cut
MAX_TEXT = 200_000
_IMAGES = ("image/png", "image/jpeg", "image/gif")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#222}
.cell{border-left:4px solid #ddd;margin:0 0 1em;padding:0 .5em}
.cell.code{border-color:#6a9fd8}.cell.markdown{border-color:#aaa}
.prompt{color:#888;font-size:12px}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.4em;margin:.2em 0;font:13px/1.35 monospace}
pre.out{background:#fff;border:1px solid #eee}pre.err{background:#fdeeee}
.note{color:#a60;font-size:12px}
"""


def _text(value) -> str:
    """A notebook's multiline string (a string or a list of strings) as one string, cut at ``MAX_TEXT``."""
    if isinstance(value, list):
        value = "".join(v for v in value if isinstance(v, str))
    if not isinstance(value, str):
        return ""
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "\n… (cut)"


def _pre(text: str, cls: str = "") -> str:
    return f'<pre class="{cls}">{html.escape(text)}</pre>'


def _image(mime: str, data) -> str | None:
    raw = _text(data).strip()
    if not raw or len(raw) > 8 * 1024 * 1024 or not _BASE64.fullmatch(raw):
        return None
    try:
        base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError):
        return None
    return f'<img alt="output image" src="data:{mime};base64,{re.sub(r"[^A-Za-z0-9+/=]", "", raw)}">'


def _output(out) -> str:
    if not isinstance(out, dict):
        return ""
    kind = out.get("output_type")
    if kind == "stream":
        return _pre(_text(out.get("text")), "out err" if out.get("name") == "stderr" else "out")
    if kind == "error":
        trace = _text(out.get("traceback")) if out.get("traceback") else f"{out.get('ename')}: {out.get('evalue')}"
        # Tracebacks carry ANSI colours: shown without them.
        return _pre(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", trace), "out err")
    data = out.get("data")
    if not isinstance(data, dict):
        return ""
    for mime in _IMAGES:
        if mime in data:
            shown = _image(mime, data[mime])
            if shown:
                return shown
    if "text/plain" in data:
        return _pre(_text(data["text/plain"]), "out")
    for mime, value in data.items():  # HTML, SVG, scripts...: their source, escaped
        return f'<div class="note">{html.escape(str(mime))} shown as text</div>' + _pre(_text(value), "out")
    return ""


def render(nb: dict, title: str) -> str:
    """The HTML page of notebook ``nb`` (parsed JSON, any shape), every text escaped."""
    cells = nb.get("cells") if isinstance(nb, dict) else None
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='note'>As saved on disk; read-only.</p>"]
    if not isinstance(cells, list):
        parts.append("<p>This file holds no cells (it is not a notebook Jupyter can read).</p>")
        cells = []
    for cell in cells[:5000]:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type") if cell.get("cell_type") in ("code", "markdown", "raw") else "raw"
        count = cell.get("execution_count")
        prompt = f"[{count}]" if isinstance(count, int) and not isinstance(count, bool) else "[ ]"
        parts.append(f'<div class="cell {kind}">')
        if kind == "code":
            parts.append(f'<div class="prompt">In {html.escape(prompt)}</div>')
        parts.append(_pre(_text(cell.get("source"))))
        if kind == "code" and isinstance(cell.get("outputs"), list):
            parts.extend(_output(o) for o in cell["outputs"][:200])
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def render_file(folder, rel: str) -> str:
    """Notebook ``rel`` under ``folder`` (a seat's workshop folder) as a page; ValueError/OSError when it cannot be read."""
    raw = read_under(folder, rel, MAX_BYTES)
    try:
        nb = json.loads(raw)
    except (ValueError, RecursionError):
        nb = None
    if nb is None:
        return render({}, rel)
    return render(nb, rel)
