"""The sparse-gradient reducer, run for real on 2 gloo ranks (spawned processes on this machine)."""

import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

from conftest import free_port, run_bounded, run_ranks

from hetrec_dist.distributed.deepspeed_internals import BUILD_LOCK_STALE_S
from hetrec_dist.distributed.sparse_reducer import (
    STRATEGIES,
    allgather_bytes,
    allreduce_bytes,
    bytes_sent,
    payload_bytes,
    reduce_basis_gradient,
)
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.projector import SliceFactors, factor_columns, project, slice_geometry
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler

BOX, N_COMPONENTS = 16, 4


def grids():
    return HalfBall.build(BOX / 2 - 1), HalfDisk.build(BOX, BOX / 2 - 1)


def rank_batch(rank):
    """A rank's images: poses, basis weights and slice gradients (different batch sizes per rank)."""
    import numpy as np

    n_images = 5 + 3 * rank
    generator = torch.Generator().manual_seed(10 + rank)
    angles = random_relion_euler(n_images, np.random.default_rng(rank))
    rotations = torch.from_numpy(matrices_from_relion_euler(*angles))
    _, disk = grids()
    weights = torch.randn(n_images, N_COMPONENTS, generator=generator, dtype=torch.float64)
    grads = torch.randn(n_images, disk.coords.shape[0], 2, generator=generator, dtype=torch.float64)
    return rotations, weights, grads


def row_offsets(rank, n_stacked):
    """A half-set basis (n_stacked 2): the rank's images alternate between the halves' rows."""
    if n_stacked == 1:
        return None
    n_voxels = grids()[0].n_voxels
    return (torch.arange(5 + 3 * rank) + rank) % n_stacked * n_voxels


def rank_factors(rank, n_stacked=1):
    half_ball, disk = grids()
    rotations, weights, grads = rank_batch(rank)
    geometry = slice_geometry(rotations, disk.coords, half_ball, row_offsets(rank, n_stacked), n_stacked)
    return SliceFactors(rotations, weights, geometry, grads)


def autograd_basis_gradient(ranks, n_stacked=1):
    """The basis gradient of the ranks' images together, by autograd through the projector in one process."""
    half_ball, disk = grids()
    rotations, weights, grads = (torch.cat(parts) for parts in zip(*(rank_batch(r) for r in ranks)))
    offsets = None if n_stacked == 1 else torch.cat([row_offsets(r, n_stacked) for r in ranks])
    basis = torch.zeros(n_stacked * half_ball.n_voxels, 2 * N_COMPONENTS, dtype=torch.float64, requires_grad=True)
    slices = project(basis, weights, slice_geometry(rotations, disk.coords, half_ball, offsets, n_stacked))
    return torch.autograd.grad((slices * grads).sum(), basis)[0].coalesce()


def _worker(rank, world_size, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    results = {}
    try:
        for strategy in STRATEGIES + ("auto",):
            for n_stacked in (1, 2):
                total, stats = reduce_basis_gradient(rank_factors(rank, n_stacked), strategy)
                results[strategy, n_stacked] = (total.indices().clone(), total.values().clone(), stats)
    finally:
        dist.destroy_process_group()
    return results


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """{(rank, strategy, n_stacked): (indices, values, stats) of the summed gradient}; n_stacked 2: a half-set
    basis."""
    ranks = run_ranks(_worker, 2, free_port(), out_dir=tmp_path_factory.mktemp("two_ranks"))
    return {(rank, *key): result for rank, by_strategy in enumerate(ranks) for key, result in by_strategy.items()}


@pytest.mark.multirank
def test_every_strategy_gives_the_one_process_gradient_and_touched_set_on_every_rank(two_rank_results):
    for (rank, strategy, n_stacked), (indices, values, stats) in two_rank_results.items():
        expected = autograd_basis_gradient([0, 1], n_stacked)
        torch.testing.assert_close(indices, expected.indices(), msg=f"{strategy} rank {rank}")
        torch.testing.assert_close(values, expected.values(), msg=f"{strategy} rank {rank}")
        assert stats.union_rows == expected.values().shape[0]
        other_indices, other_values, _ = two_rank_results[(1 - rank, strategy, n_stacked)]
        assert torch.equal(indices, other_indices) and torch.equal(values, other_values), \
            f"{strategy}: the ranks' sums differ in their bits, so their basis replicas would drift apart"


@pytest.mark.multirank
def test_bytes_are_counted_for_ring_collectives_and_auto_takes_the_cheapest(two_rank_results):
    half_ball, disk = grids()
    n_rows, n_points = half_ball.n_voxels, disk.coords.shape[0]
    touched = [len(rank_factors(r).geometry.touched_rows) for r in range(2)]
    union = autograd_basis_gradient([0, 1]).values().shape[0]
    payload = payload_bytes(n_rows, N_COMPONENTS, factor_columns(N_COMPONENTS, n_points), max(touched), 8, union,
                            world_size=2, value_bytes=8)
    row_bytes = 2 * N_COMPONENTS * 8
    assert payload["dense"] == n_rows * row_bytes  # 2 (W-1)/W = 1 for two ranks
    assert payload["gather"] == max(touched) * (row_bytes + 8)
    assert payload["union"] == union * row_bytes
    assert payload["factors"] == 8 * (10 + N_COMPONENTS + 2 * n_points) * 8  # the larger rank's 8 images
    counts, mask = 16, n_rows
    stats = {strategy: two_rank_results[(0, strategy, 1)][2] for strategy in STRATEGIES + ("auto",)}
    assert stats["gather"].bytes_sent == counts + payload["gather"]
    assert stats["factors"].bytes_sent == counts + payload["factors"]
    assert stats["dense"].bytes_sent == counts + mask + payload["dense"]
    assert stats["union"].bytes_sent == counts + mask + payload["union"]
    assert stats["auto"].strategy == min(payload, key=payload.get)
    assert stats["auto"].bytes_sent == counts + mask + min(payload.values())
    assert all(s.dense_bytes == payload["dense"] for s in stats.values())
    assert all(stats[s].bytes_sent == bytes_sent(s, payload, n_rows, 2) for s in stats)


def test_ring_byte_counts():
    assert allreduce_bytes(1000, 1) == 0 and allreduce_bytes(1000, 2) == 1000 and allreduce_bytes(1000, 8) == 1750
    assert allgather_bytes(1000, 8) == 7000


def test_a_wait_no_timeout_covers_ends_the_process_with_one_line(tmp_path):
    """DeepSpeed's shared-memory all-reduce spins forever on a dead rank; run_or_exit bounds it."""
    script = tmp_path / "wait.py"
    script.write_text(f"""
import time, torch.distributed as dist
from hetrec_dist.distributed.deepspeed_internals import run_or_exit
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
run_or_exit(lambda: time.sleep(60), 1, "a test wait")
""")
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and time.monotonic() - started < 30
    assert result.stderr.strip().splitlines() == ["Error: rank 0 of 1: a test wait got no answer from the other "
                                                  "ranks in 1 s; continue from the last checkpoint with --resume"]


@pytest.mark.multirank
def test_a_build_lock_left_by_a_stopped_run_is_removed_once_stale(tmp_path):
    """torch loads DeepSpeed's shared-memory kernel under a lock file; a process stopped meanwhile leaves it,
    and without this every later multi-rank run on the machine would wait for it forever."""
    extensions = tmp_path / "extensions"
    lock = extensions / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)

    def load_with_a_lock_aged(age_s):
        lock.touch()
        os.utime(lock, (time.time() - age_s,) * 2)
        started = time.monotonic()
        result = run_bounded([sys.executable, "-c", "from hetrec_dist.distributed.deepspeed_internals import "
                              "load_shared_memory_kernel as load; load()"], timeout_s=240,
                             env={"TORCH_EXTENSIONS_DIR": str(extensions), "DS_ACCELERATOR": "cpu"})
        assert result.returncode == 0, result.stderr
        assert f"hetrec: removed {lock}, left" in result.stderr and not lock.exists()
        assert (lock.parent / "deepspeed_shm_comm.so").is_file()
        return time.monotonic() - started

    load_with_a_lock_aged(BUILD_LOCK_STALE_S + 10)  # stale already: removed first, then built here
    assert load_with_a_lock_aged(BUILD_LOCK_STALE_S - 3) > 3  # goes stale while this process waits on it
