"""A seat's live progress: measured in the completion workers as CLEANUP counts it, again only when a notebook changed."""

import asyncio
import json
import logging

from tests.hubutil import write_workshop
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import completion_worker
from wod_jupyterhub.service.progress import Progress
from wod_jupyterhub.workshops.catalog import CatalogCache

WORKSHOP = "WKSHP-Progress"


def test_progress_is_measured_as_cleanup_counts_it_and_reused_until_a_notebook_changes(tmp_path, monkeypatch):
    folder = write_workshop(tmp_path / "notebooks", WORKSHOP, (1, 5))
    wod = Wod(notebooks=[str(tmp_path / "notebooks")], students_root=str(tmp_path / "students"), student_max=5)
    home = wod.home(2) / WORKSHOP
    home.mkdir(parents=True)
    for nb in ("0-ReadMeFirst.ipynb", "1-Exercise.ipynb"):
        (home / nb).write_bytes((folder / nb).read_bytes())
    (home / "mine.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "source": "x", "execution_count": 1, "outputs": []}]}))
    asked, reads = [], []
    real = completion_worker.measure
    monkeypatch.setattr(completion_worker, "measure", lambda *a, **k: asked.append(a) or real(*a, **k))
    progress = Progress(wod, CatalogCache(wod, ttl=60), logging.getLogger("test"))

    async def run():
        first = await progress.get(2, WORKSHOP)
        again = await progress.get(2, WORKSHOP, 0)
        reads.append(len(asked))
        exercise = json.loads((home / "1-Exercise.ipynb").read_text())
        exercise["cells"][0]["execution_count"] = 1
        (home / "1-Exercise.ipynb").write_text(json.dumps(exercise))
        moved = await progress.get(2, WORKSHOP, 0)
        return first, again, moved

    first, again, moved = asyncio.run(run())
    # The participant's own notebook does not count: the ReadMeFirst's cell and the exercise's two.
    assert (first["executed"], first["total"], first["ratio"]) == (0, 3, 0.0)
    assert (again["executed"], again["total"]) == (0, 3) and reads == [1]  # no notebook changed: not read again
    assert (moved["executed"], moved["total"]) == (1, 3) and moved["ratio"] == round(1 / 3, 4) and len(asked) == 2
    assert asyncio.run(progress.get(3, WORKSHOP))["total"] == 0  # a home that is not there: nothing to count
    assert asyncio.run(progress.get(2, None)) is None
