"""``python -m wod_jupyterhub.service``: run the service (what ``jupyterhub_config.py`` starts)."""

import signal
import sys


def _exit_while_starting(_signum, _frame):
    raise SystemExit(0)


# Until the event loop takes SIGTERM and SIGINT over (WodService.run), a stop request ends the
# process at once and quietly: nothing runs yet that must stop in order. Set before the imports,
# which take seconds on a busy machine.
for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, _exit_while_starting)

from .app import main  # noqa: E402

sys.exit(main())
