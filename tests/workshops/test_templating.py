"""Templates are a workshop author's, rendered in the service: the known Jinja2 sandbox escapes are refused.

Jinja2 3.1.5 let ``|attr("format")`` reach ``str.format`` unchecked, and a
payload printed the service's environment; ``setup.cfg`` asks for 3.1.6 or
later. Each payload here is rendered by the service's own renderer, strict
and lenient, with a secret in the environment: it must fail with a
RenderError or print nothing of the secret, the environment or Python's
internals.
"""

from pathlib import Path

import jinja2
import pytest
from traitlets.config import PyFileConfigLoader

from wod_jupyterhub.service.app import SECRET_ENV, drop_secrets
from wod_jupyterhub.workshops.templating import Renderer, RenderError

PROBE = "probe-secret-6Zq2"

ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ 'x'|attr('__class__') }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    # str.format and format_map reach attributes through the format string
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '{a.__class__.__mro__}'.format_map({'a': 1}) }}",
    # CVE-2025-27516 (fixed in 3.1.6): the format method taken through |attr escapes the check of str.format
    "{{ ('{0.__init__.__globals__[os].environ}'|attr('format'))(cycler) }}",
    "{{ ('{0.__init__.__globals__}'|attr('format'))(joiner) }}",
    "{{ ('{0.__class__}'|attr('format_map'))({'0': 1}) }}",
    # the globals a template gets
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ lipsum.__globals__.os.environ }}",
    "{{ range.__self__ }}",
    "{{ dict.__base__.__subclasses__() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ {}.update.__self__ }}",
    "{{ cycler.next.__func__.__globals__ }}",
    "{{ lipsum.__code__.co_consts }}",
    "{{ (1).__class__.__subclasses__() }}",
    "{% set x = cycler.__init__ %}{{ x.__globals__ }}",
    "{{ config }}{{ request }}{{ environ }}{{ os }}",
]

LEAKS = (PROBE, "<class", "<module", "<function", "<built-in", "<bound", "environ(", "__globals__", "subprocess")


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize("payload", ESCAPES, ids=[f"e{i}" for i in range(len(ESCAPES))])
def test_known_sandbox_escapes_are_refused(tmp_path, monkeypatch, payload, strict):
    monkeypatch.setenv("WOD_SECRET_KEY", PROBE)
    path = tmp_path / "setup.sh"
    path.write_text(f"echo start\n{payload}\necho end\n")
    renderer = Renderer(strict_undefined=strict, clear_outputs=True)
    try:
        out = renderer.render_file(path, "setup.sh", {"STDID": 1})
    except RenderError as e:
        assert PROBE not in str(e)
        return
    assert not [leak for leak in LEAKS if leak in out], out[:500]


def test_the_jinja2_in_use_has_the_format_fix():
    major, minor, patch = (int(x) for x in jinja2.__version__.split(".")[:3])
    assert (major, minor, patch) >= (3, 1, 6), jinja2.__version__


def test_the_service_drops_its_secrets_from_the_environment():
    env = {name: "x" for name in SECRET_ENV} | {"PATH": "/bin", "WOD_NOTEBOOKS": "/n"}
    assert sorted(drop_secrets(env)) == sorted(SECRET_ENV)
    assert env == {"PATH": "/bin", "WOD_NOTEBOOKS": "/n"}


def test_the_demo_config_hands_the_service_no_hub_secret(tmp_path, monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    for name, value in {"WOD_API_TOKEN": "portal-token", "WOD_ADMIN_HASH": "scrypt$x", "WOD_NOTEBOOKS": "/n", "WOD_STATE_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JUPYTERHUB_SERVICE_NAME", raising=False)
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(repo)).load_config()
    (service,) = [s for s in config.JupyterHub.services if s["name"] == "wod"]
    assert service["environment"]["WOD_NOTEBOOKS"] == "/n"
    assert "WOD_API_TOKEN" not in service["environment"] and "WOD_ADMIN_HASH" not in service["environment"]
