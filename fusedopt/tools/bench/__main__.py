"""``python -m fusedopt.tools.bench``: a benchmark worker process (see :mod:`.worker`)."""

import sys

from .worker import main

sys.exit(main())
