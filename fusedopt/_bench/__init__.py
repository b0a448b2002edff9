"""The benchmark engine behind ``fusedopt bench`` and the scripts in benchmarks/.

- :mod:`.traffic`: the bytes formula and the traffic-ceiling kernels
- :mod:`.contenders`: what one case times (fused, unfused, torch, ceilings)
- :mod:`.timing`: interleaved rounds, warm-up, summaries
- :mod:`.sweep`: one case (:func:`measure`) or a whole sweep (:func:`run`)
- :mod:`.report`, :mod:`.plot`, :mod:`.machine`: tables, JSON, PNG, machine description
"""

from .sweep import Result, Settings, measure, run

__all__ = ["Result", "Settings", "measure", "run"]
