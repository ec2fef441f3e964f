"""``python -m pa_devkit``: the dev kit's command line."""

import sys

from pa_devkit.cli import main

sys.exit(main())
