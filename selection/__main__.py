"""``python -m selection``: see ``selection.cli``."""

import sys

from .cli import main

sys.exit(main())
