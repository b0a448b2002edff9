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
