"""setup.cfg holds the metadata; this adds what it cannot declare.

- ``share/`` (the sample workshops and the skeleton of every home) ships
  inside the package as ``wod_jupyterhub/share``, so an installed ``wod``
  finds them as a source checkout does (``config.share_dir``); ``find:``
  cannot add a package from another folder.
- The development harness (``hubprocess``, ``demo``: ``make demo``, the tests
  and the benches) needs the repository (its configuration, ``node_modules``)
  and stays out of the wheel.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

#: modules of the source tree only, wherever they sit in the package
DEVELOPMENT_MODULES = {"hubprocess", "demo"}


class BuildWithoutHarness(build_py):
    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[1] not in DEVELOPMENT_MODULES]


setup(
    packages=find_packages(include=["wod_jupyterhub*"]) + ["wod_jupyterhub.share"],
    package_dir={"wod_jupyterhub.share": "share"},
    cmdclass={"build_py": BuildWithoutHarness},
)
