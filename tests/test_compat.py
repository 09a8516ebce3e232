"""The old import paths a ``jupyterhub_config.py`` may name keep working, with a deprecation warning."""

import importlib
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from wod_jupyterhub.hub.auth import WodAuthenticator
from wod_jupyterhub.hub.spawner import WodSpawner


@pytest.mark.parametrize("old,cls", [("wod_jupyterhub.auth", WodAuthenticator), ("wod_jupyterhub.spawner", WodSpawner)])
def test_the_old_module_paths_are_deprecated_aliases(old, cls):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, cls.__name__) is cls


def test_the_entry_points_name_the_classes():
    assert entry_points(group="jupyterhub.authenticators")["wod"].load() is WodAuthenticator
    assert entry_points(group="jupyterhub.spawners")["wod"].load() is WodSpawner
    assert entry_points(group="console_scripts")["wod"].value == "wod_jupyterhub.cli.main:main"


@pytest.mark.parametrize("module", ["wod_jupyterhub.service", "wod_jupyterhub.cli"])
def test_python_dash_m_runs_the_service_and_the_command(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and ("wod" in r.stdout)
