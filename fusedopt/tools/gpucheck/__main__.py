"""``python3 -m fusedopt.tools.gpucheck``: see :mod:`fusedopt.tools.gpucheck`."""

import sys

from .run import main

sys.exit(main())
