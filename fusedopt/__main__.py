"""``python -m fusedopt bench|demo|info``."""

import sys

from .cli import main

sys.exit(main())
