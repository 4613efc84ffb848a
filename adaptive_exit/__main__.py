"""``python -m adaptive_exit``."""

import sys

from .cli import main

sys.exit(main())
