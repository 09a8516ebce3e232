"""The service's settings: each has one name; an old name stops the service at start with a sentence."""

import subprocess
import sys

from wod_jupyterhub.service.app import RENAMED


def test_an_old_setting_name_is_refused_with_its_new_name(tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "c = get_config()  # noqa\n"
        "c.Operations.stage_seats = False\n"
        "c.WodService.hook_timeout = 5\n"
        "c.WodService.workers = 4\n"
        f"c.Wod.db_url = 'sqlite:///{tmp_path / 'wod.sqlite'}'\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "wod_jupyterhub.service", "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    for sentence in (
        "c.Operations.stage_seats is now c.WodOperations.stage_seats",
        "c.WodService.hook_timeout is now c.WodHooks.timeout",
        "c.WodService.workers is now c.WodOperations.workers",
    ):
        assert sentence in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "wod.sqlite").exists()  # refused before anything was created


def test_every_moved_setting_exists_under_its_new_name():
    from wod_jupyterhub.service.app import WodService
    from wod_jupyterhub.service.hooks import WodHooks
    from wod_jupyterhub.service.operations import WodOperations

    owners = {"c.WodOperations": WodOperations, "c.WodHooks": WodHooks}
    for (_section, name), now in RENAMED.items():
        if name is None:
            assert now in owners
            continue
        owner, new = now.rsplit(".", 1)
        assert owners[owner].class_traits(config=True).get(new) is not None, now
        # ... and no longer on WodService: one owner per setting.
        assert name not in WodService.class_traits(config=True), name
