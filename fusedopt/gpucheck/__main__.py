"""``python3 -m fusedopt.gpucheck``: see :mod:`fusedopt.gpucheck`."""

import sys

from .run import main

sys.exit(main())
