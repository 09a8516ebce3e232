"""setup.cfg holds the metadata; this adds what it cannot declare.

- ``share/`` (the sample workshops and the skeleton of every home) ships
  inside the package as ``wod_jupyterhub/share``, so an installed ``wod``
  finds them as a source checkout does (``config.share_dir``); ``find:``
  cannot add a package from another folder.
- The session bar's JupyterLab extension, prebuilt by ``make`` into
  ``labextension/dist`` (never built on install), goes where JupyterLab finds
  it: ``share/jupyter/labextensions/wod-jupyterhub-sessionbar`` under the
  environment's prefix. A tree where it was not built yet (a fresh clone
  before ``make``) installs without it.
- The development harness (``hubprocess``, ``demo``: ``make demo``, the tests
  and the benches) needs the repository (its configuration, ``node_modules``)
  and stays out of the wheel.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: modules of the source tree only, wherever they sit in the package
DEVELOPMENT_MODULES = {"hubprocess", "demo"}


LABEXTENSION = "wod-jupyterhub-sessionbar"


def labextension_files() -> list:
    """``data_files`` of the built JupyterLab extension, folder by folder (paths relative to this file)."""
    built = Path("labextension/dist")
    if not (built / "package.json").is_file():
        return []
    target = Path("share/jupyter/labextensions") / LABEXTENSION
    folders = {}
    for path in sorted(built.rglob("*")):
        if path.is_file():
            folders.setdefault(str(target / path.parent.relative_to(built)), []).append(str(path))
    folders[str(target)].append("labextension/install.json")
    return sorted(folders.items())


class BuildWithoutHarness(build_py):
    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[1] not in DEVELOPMENT_MODULES]


setup(
    packages=find_packages(include=["wod_jupyterhub*"]) + ["wod_jupyterhub.share"],
    package_dir={"wod_jupyterhub.share": "share"},
    cmdclass={"build_py": BuildWithoutHarness},
    data_files=labextension_files(),
)
