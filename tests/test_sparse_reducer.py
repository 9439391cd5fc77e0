"""The sparse-gradient reducer, run for real on 2 gloo ranks (spawned processes on this machine)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hetrec_dist.distributed.sparse_reducer import (STRATEGIES, payload_bytes, reduce_by_factors,
                                                    reduce_sparse_gradient)
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.projector import project, slice_geometry
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler

N_ROWS, N_COLUMNS = 500, 6


def rank_gradient(rank):
    """A rank's sparse gradient: overlapping row sets of different sizes, fixed values."""
    generator = torch.Generator().manual_seed(rank)
    rows = torch.randperm(N_ROWS, generator=generator)[: 40 + 30 * rank].sort().values
    values = torch.randn(len(rows), N_COLUMNS, generator=generator, dtype=torch.float64)
    return torch.sparse_coo_tensor(rows[None], values, (N_ROWS, N_COLUMNS)).coalesce()


BOX, N_COMPONENTS = 16, 4


def rank_batch(rank):
    """A rank's images: poses, basis weights and slice gradients (different batch sizes per rank)."""
    import numpy as np

    n_images = 5 + 3 * rank
    generator = torch.Generator().manual_seed(10 + rank)
    rotations = torch.from_numpy(matrices_from_relion_euler(*random_relion_euler(n_images, np.random.default_rng(rank))))
    disk = HalfDisk.build(BOX, BOX / 2 - 1)
    weights = torch.randn(n_images, N_COMPONENTS, generator=generator, dtype=torch.float64)
    grads = torch.randn(n_images, disk.coords.shape[0], 2, generator=generator, dtype=torch.float64)
    return rotations, weights, grads


def local_basis_gradient(rank, half_ball, disk):
    """The rank's own basis gradient by autograd through the projector."""
    rotations, weights, grads = rank_batch(rank)
    basis = torch.zeros(half_ball.n_voxels, 2 * N_COMPONENTS, dtype=torch.float64, requires_grad=True)
    slices = project(basis, weights, slice_geometry(rotations, disk.coords, half_ball))
    return torch.autograd.grad((slices * grads).sum(), basis)[0].coalesce()


def _worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for strategy in STRATEGIES + ("auto",):
            total, stats = reduce_sparse_gradient(rank_gradient(rank), strategy)
            results[(rank, strategy)] = (total.indices().clone(), total.values().clone(), stats)
        half_ball, disk = HalfBall.build(BOX / 2 - 1), HalfDisk.build(BOX, BOX / 2 - 1)
        total, stats = reduce_by_factors(*rank_batch(rank), half_ball, disk.coords)
        results[(rank, "factors")] = (total.indices().clone(), total.values().clone(), stats)
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


def test_factors_rebuild_the_sum_of_the_ranks_autograd_gradients(two_rank_results):
    half_ball, disk = HalfBall.build(BOX / 2 - 1), HalfDisk.build(BOX, BOX / 2 - 1)
    expected = (local_basis_gradient(0, half_ball, disk) + local_basis_gradient(1, half_ball, disk)).coalesce()
    for rank in range(2):
        indices, values, stats = two_rank_results[(rank, "factors")]
        torch.testing.assert_close(indices, expected.indices())
        torch.testing.assert_close(values, expected.values())
        n_floats = 9 + N_COMPONENTS + 2 * disk.coords.shape[0]
        assert stats.bytes_sent == 8 + 8 * n_floats * 8  # counts + the larger rank's 8 images, float64
        assert stats.bytes_sent < stats.dense_bytes


def test_every_strategy_gives_the_sum_and_the_union_on_every_rank(two_rank_results):
    expected = (rank_gradient(0) + rank_gradient(1)).coalesce()
    for (rank, strategy), (indices, values, stats) in two_rank_results.items():
        if strategy == "factors":
            continue
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
