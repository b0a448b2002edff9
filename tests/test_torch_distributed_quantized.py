"""fusedopt.torch with quantized state (``state_dtype="q8"``) under FSDP2: 2 gloo ranks on
the loopback (tests/torch_distributed_quantized.py), bounded in time.

What can be asserted: each rank quantizes its own shard in blocks that start at the shard's
first element, so an FSDP2 run is not the one-process q8 run (its blocks, and so its
scales, differ); it is, bit for bit, the engine stepping that rank's shards. So: the
choice of quantized state follows the param's global size on every rank (uneven shards
included), every step of every rank equals the engine's on plain copies of its shards with
the same grads, the loss drops, a run resumed from a saved state dict continues bit for
bit, and state dicts of another sharding are refused, naming what differs, with nothing
changed."""

import pytest
import torch
import torch_distributed
import torch_distributed_quantized as worker

from fusedopt.memory.quant import MIN_QUANTIZED_SIZE


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fsdp_q8") / "result")
    return torch_distributed.spawn(worker.run, out)


@pytest.mark.slow
def test_the_global_size_chooses_quantized_state_on_every_rank(results):
    for result in results:
        local, full = result["local_sizes"][0], result["global_sizes"][0]
        assert local < MIN_QUANTIZED_SIZE <= full
        assert all(n < MIN_QUANTIZED_SIZE for n in result["global_sizes"][1:])
        assert result["storages"] == ["q8", "float32", "float32", "float32"]
    assert results[0]["local_sizes"][0] != results[1]["local_sizes"][0]  # uneven shards


@pytest.mark.slow
def test_each_rank_steps_as_the_engine_on_its_shards_and_the_loss_drops(results):
    for result in results:
        assert result["engine_storages"] == result["storages"]
        assert result["equal_to_engine"] == [True] * worker.STEPS
        losses = result["losses"]
        assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_a_run_resumed_from_its_state_dict_continues_bit_for_bit(results):
    for rank, result in enumerate(results):
        assert result["resumed_equal"]
        record = result["record"]
        assert record["mesh_shape"] == (torch_distributed.WORLD,)
        assert record["coordinate"] == (rank,)
        assert record["global_shape"] == (worker.WIDE, worker.FEATURES)
        assert record["local_shape"][0] * worker.FEATURES == result["local_sizes"][0]


@pytest.mark.slow
def test_a_state_dict_of_another_sharding_is_refused_and_nothing_changes(results):
    for result in results:
        refusals = result["refusals"]
        assert "another shard" in refusals["other rank"]
        assert "coordinate" in refusals["other rank"]
        assert "saved from an unsharded param" in refusals["unsharded into sharded"]
        assert "this param is not sharded" in refusals["sharded into unsharded"]
        assert "mesh_shape (2,) saved, (1,) here" in refusals["world size 1"]
        assert all("cannot be resharded" in message for message in refusals.values())
        assert result["unchanged"]
        assert result["continues_equal"]


@pytest.mark.slow
def test_q4_and_an_empty_shard_resume_bit_for_bit(results):
    shards = [result["q4_empty_shard"] for result in results]
    assert sorted(s["local_sizes"][0] for s in shards) == [0, worker.LONG]
    for s in shards:
        assert s["storages"] == ["q4", "float32", "float32"]
        assert s["resumed_equal"]


#: The largest distance from a point of [-1, 1] (m, signed map) or [0, 1] (v, unsigned)
#: to q8's (the power map's) nearest entry: -1 to the lowest entry -(127/128)**2 signed,
#: half the top gap 1 - (255/256)**4 unsigned (tests/test_quantized_resharding.py derives
#: them), plus 2**-22 for float32 roundings: a resharded load moves each element at most
#: this times its block's largest |value|.
REACH = {"exp_avg": 1 - (127 / 128) ** 2 + 2.0 ** -22,
         "exp_avg_sq": (1 - (255 / 256) ** 4) / 2 + 2.0 ** -22}
BLOCK = 256


def _within_reach(saved: dict, loaded: dict, starts: list) -> tuple[float, int]:
    """The largest error of ``loaded`` over its bound, and how many elements moved, where
    the loading run's shards start at the flat offsets ``starts``; asserts the bound."""
    worst, moved = 0.0, 0
    for (name, slot), want in saved.items():
        want = want.double().reshape(-1)
        got = loaded[name, slot].double().reshape(-1)
        ends = starts[1:] + [want.numel()]
        for start, end in zip(starts, ends):
            for s in range(start, end, BLOCK):
                w, g = want[s:min(s + BLOCK, end)], got[s:min(s + BLOCK, end)]
                bound = REACH[slot] * float(w.abs().max()) + 2.0 ** -149
                error = (g - w).abs()
                assert bool((error <= bound).all()), (name, slot, s, float(error.max()), bound)
                worst = max(worst, float((error / bound).max()))
                moved += int((error > 0).sum())
    return worst, moved


@pytest.mark.slow
def test_dcp_at_the_same_world_size_loads_codes_and_absmax_bit_for_bit(results):
    for result in results:
        assert result["dcp"]["same_codes_absmax"]
        assert result["dcp"]["same_continues_equal"]


@pytest.mark.slow
def test_dcp_at_another_world_size_loads_within_the_bound_and_trains_on(results):
    for result in results:
        dcp = result["dcp"]
        assert dcp["unsharded"]["starts"] == [0]
        assert dcp["resharded"]["starts"] == [0, 66 * worker.FEATURES]
        for saved, run in ((dcp["saved"], dcp["unsharded"]),
                           (dcp["resharded"]["saved"], dcp["resharded"])):
            assert sorted(saved) == [("0.weight", "exp_avg"), ("0.weight", "exp_avg_sq")]
            worst, moved = _within_reach(saved, run["loaded"], run["starts"])
            assert moved > 0 and worst > 0.1, (worst, moved)  # resharding moved some
            assert run["losses"][-1] < run["losses"][0]
        # saved at 2 ranks, loaded at 1: the same values on either rank
        assert all(torch.equal(a, b) for a, b in zip(dcp["unsharded"]["loaded"].values(),
                                                     results[0]["dcp"]["unsharded"]
                                                     ["loaded"].values()))
