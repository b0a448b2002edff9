"""fusedopt.torch as the optimizer of a DistributedDataParallel and of an FSDP2
(``fully_shard``) model: 2 processes over gloo on the loopback, started here, bounded in
time, each on half the batch, equal to one process on the whole batch. Under FSDP2 the
params are DTensors and each rank steps its local shards in one call."""

import pytest
import torch
import torch_distributed
import torch_loops as loops

from fusedopt.torch import CLASSES


def _run(mode, name, tmp_path):
    return torch_distributed.spawn(torch_distributed.run, str(tmp_path / "result"), mode, name)


def _single_process(name):
    model = loops.mlp(dtype=torch.float64)
    x, y = loops.data(dtype=torch.float64)
    opt = CLASSES[name](model.parameters(), lr=1e-2)
    loops.train(model, opt, torch_distributed.STEPS, x, y)
    return [p.detach() for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_two_gloo_ranks_match_one_process(tmp_path, mode, name):
    results = _run(mode, name, tmp_path)
    expected = _single_process(name)
    total = sum(p.numel() for p in expected)
    for rank, result in enumerate(results):
        for got, want in zip(result["params"], expected):
            assert loops.relative(got, want) <= 1e-10, (rank, loops.relative(got, want))
        summary = result["summary"]
        assert summary["rebuilds"] == 0
        if mode == "fsdp2":
            assert summary["param_types"] == ["DTensor"]
            if name == "adamw":
                assert summary["state_types"] == ["DTensor"]
            assert summary["local_elements"] < total  # each rank holds its shards only
        else:
            assert summary["local_elements"] == total
        if name == "adamw":
            assert summary["steps"] == [float(torch_distributed.STEPS)]
    assert loops.relative(expected[0], loops.mlp(dtype=torch.float64)[0].weight.detach()) > 1e-3
