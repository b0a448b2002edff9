"""Every entry point of every 16-bit, master, Kahan and stochastic storage runs on the
host, and is right.

tests/test_cuda_host.py runs every variant on float32 and float64 params; here each
variant flag set of every other storage (fusedopt/memory/storage.py: 16-bit params and grads,
bfloat16 state, fp32 masters, remainders) runs through the CUDA host execution over
awkward sizes, a misaligned view and several blocks, and is held to the float64 reference
with the storage roundings, step by step (tests/storage_runs.py). A storage the runtime can
request and no test runs fails ``test_every_storage_entry_is_run``.
"""

import numpy as np
import pytest
import storage_runs as runs
from cuda_host import compare

from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.engine import Engine
from fusedopt.memory.storage import all_storages, mode_options

STORAGES = [st for st in all_storages()
            if not (st.param in compare.BASE_DTYPES and st.state == st.param)]
SHAPES = ((1,), (3,), (37, 53), (1001,))  # the last is run as a misaligned view
STEPS = 3


def _first_variant_per_entry():
    found = {}
    # A factored moment (Adafactor) keeps plain storage of the param's dtype only.
    for spec in (s for s in REGISTRY.values() if s.on_cuda and s.factored is None):
        for variant in compare.variants(spec):
            flags = spec.flags(compare.full_hyper(spec, variant), variant.convention)
            found.setdefault((spec.kernel, flags), (spec, variant))
    return list(found.values())


CASES = [(spec, variant, st) for spec, variant in _first_variant_per_entry() for st in STORAGES]


def _misaligned(values, dtype):
    base = np.zeros(values.size + 1, dtype=dtype)
    view = base[1:].reshape(values.shape)
    view[...] = values.astype(dtype)
    return view


def test_every_storage_entry_is_run():
    wanted = {name for spec in REGISTRY.values() for st, _, name in spec.entries()
              if st in STORAGES}
    reached = {spec.entry(st, spec.flags(compare.full_hyper(spec, v), v.convention))
               for spec, v, st in CASES}
    assert wanted <= reached, f"no host run for {sorted(wanted - reached)[:5]}"


@pytest.mark.parametrize("spec, variant, st", CASES,
                         ids=[f"{s.name}-{v.id()}-{st.param}-{st.grad}-{st.state}-{st.mode}"
                              for s, v, st in CASES])
def test_entry_matches_the_reference(host_cuda, monkeypatch, spec, variant, st):
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 64)
    hp = compare.full_hyper(spec, variant)
    params, grads = runs.make_problem(SHAPES, STEPS, seed=13)
    import reference
    pdt, gdt = reference.as_dtype(st.param), reference.as_dtype(st.grad)
    arrays = [p.astype(pdt) for p in params[:-1]] + [_misaligned(params[-1], pdt)]
    engine = Engine(spec, variant.convention, backend="cuda", state_dtype=st.state,
                    **mode_options(st.mode))
    engine.add_group(variant.hp)
    engine.add_params(arrays)
    taken = [runs._snapshot(engine)]
    for step_grads in grads:
        engine.step([g.astype(gdt) for g in step_grads])
        taken.append(runs._snapshot(engine))
    flags = spec.flags(hp, variant.convention)
    reduction = {spec.reduce_entry(st, flags), "combine_sums"} if spec.reductions else set()
    assert {name for name, _, _ in host_cuda.launches} == {spec.entry(st, flags), *reduction}
    runs.check_against_reference(spec, variant.hp, variant.convention, grads, taken,
                                 st.param, st.state, f"{spec.name} {variant.id()} {st}",
                                 grad_dtype=st.grad)
