"""The students' kernels as JupyterLab will report them, so a provisioned notebook opens unchanged.

When a notebook opens, JupyterLab writes the running kernel's ``kernelspec``
(name, display name, language) and its ``language_info`` into the
notebook's metadata, and marks the notebook unsaved when that changes
anything. A workshop written elsewhere carries its author's values ("Python
3", an older Python's version): filling in the students' own, once per
template, lets the first thing a student sees open clean.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading

log = logging.getLogger(__name__)

#: run by the students' Python: its kernel specs, and what an ipykernel kernel of it answers to kernel_info
_MEASURE = r"""
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
specs = {}
for name, found in KernelSpecManager().get_all_specs().items():
    spec = found.get("spec") or {}
    argv = spec.get("argv") or []
    specs[name] = {
        "display_name": spec.get("display_name"),
        "language": spec.get("language"),
        "ipykernel": any(a.startswith("ipykernel") for a in argv),
    }
try:
    from ipykernel.ipkernel import IPythonKernel
    language_info = dict(IPythonKernel.language_info)
except Exception:
    language_info = None
json.dump({"kernelspecs": specs, "language_info": language_info}, sys.stdout)
"""

#: the kernel a notebook without a kernelspec opens with (jupyter_server's default kernel name)
DEFAULT_KERNEL = "python3"


class Kernels:
    """What the students' kernels report, measured once from their Python (``c.Wod.kernel_python``).

    ``fill`` then gives a notebook the metadata its kernel will write on
    open. A Python that cannot be asked (missing, no jupyter_client) leaves
    notebooks as they are, with one warning.
    """

    def __init__(self, python: str, timeout: float = 60):
        self.python = python
        self.timeout = timeout
        self._measured: dict | None = None
        self._lock = threading.Lock()

    def measured(self) -> dict:
        """``{"kernelspecs": {name: {display_name, language, ipykernel}}, "language_info": {...} | None}``; cached."""
        with self._lock:
            if self._measured is None:
                self._measured = self._measure()
            return self._measured

    def _measure(self) -> dict:
        nothing = {"kernelspecs": {}, "language_info": None}
        try:
            # -I: what the kernel itself would import, never a module of the current folder
            done = subprocess.run(
                [self.python, "-I", "-c", _MEASURE], capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("Notebooks keep their kernel metadata: cannot ask %s for its kernels: %s", self.python, e)
            return nothing
        try:
            found = json.loads(done.stdout) if done.returncode == 0 else None
        except ValueError:
            found = None
        if not isinstance(found, dict) or not isinstance(found.get("kernelspecs"), dict):
            last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
            log.warning("Notebooks keep their kernel metadata: %s did not list its kernels: %s", self.python, last)
            return nothing
        return found

    def fill(self, nb: dict) -> bool:
        """Give ``nb`` the ``kernelspec`` and ``language_info`` its kernel reports on open; whether that changed it.

        A notebook naming a kernel the students do not have is left alone
        (JupyterLab asks for one then); one naming none gets the default
        kernel, which is what JupyterLab starts for it.
        """
        metadata = nb.get("metadata")
        if not isinstance(metadata, dict):
            return False
        found = self.measured()
        specs = found["kernelspecs"]
        current = metadata.get("kernelspec")
        name = current.get("name") if isinstance(current, dict) else None
        if name is None:
            name = DEFAULT_KERNEL
        spec = specs.get(name)
        if not isinstance(name, str) or not isinstance(spec, dict):
            return False
        if not (isinstance(spec.get("display_name"), str) and isinstance(spec.get("language"), str)):
            return False
        # Exactly the keys JupyterLab writes: any other makes its comparison differ.
        wanted = {"name": name, "display_name": spec.get("display_name"), "language": spec.get("language")}
        changed = current != wanted
        metadata["kernelspec"] = wanted
        info = found.get("language_info")
        if spec.get("ipykernel") and isinstance(info, dict) and metadata.get("language_info") != info:
            metadata["language_info"] = dict(info)
            changed = True
        return changed
