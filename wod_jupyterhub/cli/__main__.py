"""``python -m wod_jupyterhub.cli``: the ``wod`` command, where it is not on the PATH."""

import sys

from .main import main

sys.exit(main())
