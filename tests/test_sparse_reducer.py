"""The sparse-gradient reducer, run for real on 2 gloo ranks (spawned processes on this machine)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hetrec_dist.distributed.sparse_reducer import STRATEGIES, payload_bytes, reduce_sparse_gradient

N_ROWS, N_COLUMNS = 500, 6


def rank_gradient(rank):
    """A rank's sparse gradient: overlapping row sets of different sizes, fixed values."""
    generator = torch.Generator().manual_seed(rank)
    rows = torch.randperm(N_ROWS, generator=generator)[: 40 + 30 * rank].sort().values
    values = torch.randn(len(rows), N_COLUMNS, generator=generator, dtype=torch.float64)
    return torch.sparse_coo_tensor(rows[None], values, (N_ROWS, N_COLUMNS)).coalesce()


def _worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for strategy in STRATEGIES + ("auto",):
            total, stats = reduce_sparse_gradient(rank_gradient(rank), strategy)
            results[(rank, strategy)] = (total.indices().clone(), total.values().clone(), stats)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results():
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(_worker, args=(2, _free_port(), results), nprocs=2, start_method="spawn")
    return dict(results)


def test_every_strategy_gives_the_sum_and_the_union_on_every_rank(two_rank_results):
    expected = (rank_gradient(0) + rank_gradient(1)).coalesce()
    for (rank, strategy), (indices, values, stats) in two_rank_results.items():
        torch.testing.assert_close(indices, expected.indices(), msg=f"{strategy} rank {rank}")
        torch.testing.assert_close(values, expected.values(), msg=f"{strategy} rank {rank}")
        assert stats.union_rows == expected.values().shape[0]


def test_bytes_are_counted_for_ring_collectives_and_auto_takes_the_cheapest(two_rank_results):
    union = (rank_gradient(0) + rank_gradient(1)).coalesce().values().shape[0]
    payload = payload_bytes(N_ROWS, N_COLUMNS, max_nnz=70, union_rows=union, world_size=2, value_bytes=8)
    assert payload["dense"] == N_ROWS * N_COLUMNS * 8  # 2 (W-1)/W = 1 for two ranks
    assert payload["gather"] == 70 * (N_COLUMNS * 8 + 8)
    counts, mask = 8, N_ROWS
    stats = {strategy: two_rank_results[(0, strategy)][2] for strategy in STRATEGIES + ("auto",)}
    assert stats["gather"].bytes_sent == counts + payload["gather"]
    assert stats["dense"].bytes_sent == counts + mask + payload["dense"]
    assert stats["union"].bytes_sent == counts + mask + payload["union"]
    assert stats["auto"].strategy == min(payload, key=payload.get)
    assert all(s.dense_bytes == payload["dense"] for s in stats.values())
