"""``python -m selection``: see ``selection.cli``; time limits count from the process's start."""

import sys

from .cli import main, process_start

sys.exit(main(started=process_start()))
