"""The benchmark engine behind ``fusedopt bench`` and the scripts in benchmarks/.

- :mod:`.traffic`: the bytes formula and the traffic-ceiling kernels
- :mod:`.contenders`: what one case times (fused, unfused, torch, ceilings), built alone
  for a worker process or all together in one process
- :mod:`.worker`, :mod:`.isolated`: the isolated method - a worker process per contender,
  driven round by round from the parent
- :mod:`.timing`: blocks of calls, interleaved rounds, warm-up
- :mod:`.results`: a case over every repeat of the sweep: medians, spreads, ratios
- :mod:`.sweep`: one case (:func:`measure`) or a whole repeated sweep (:func:`run`) with the
  ceiling-drift probe
- :mod:`.multitensor`: the 200-tensor model and its contenders
- :mod:`.report`, :mod:`.markdown`, :mod:`.plot`, :mod:`.machine`: tables, JSON, markdown for
  RESULTS.md, PNGs, the machine (L3 size, threads, load)
"""

from .results import Result
from .sweep import Settings, measure, run

__all__ = ["Result", "Settings", "measure", "run"]
