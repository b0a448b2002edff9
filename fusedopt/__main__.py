"""``python -m fusedopt bench|demo|info``."""

import sys

from .tools.cli import main

sys.exit(main())
