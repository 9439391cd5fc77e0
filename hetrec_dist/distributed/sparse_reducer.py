"""Summing the sparse basis gradient over data-parallel ranks, touching only what some rank touched.

Each rank holds a coalesced sparse COO gradient (V x C rows, C = 2(K+1) real values a row). Every strategy
returns the same thing on every rank: the sum over ranks, as a coalesced sparse tensor whose rows are the
union of the rows any rank touched (what a single process with the whole global batch would have), and the
exact number of bytes this rank sent, counted for ring collectives (all-reduce of n bytes: 2 (W-1)/W n;
all-gather of n bytes a rank: (W-1) n).

Strategies (only collectives that gloo and NCCL both have: all_reduce SUM/MAX, all_gather):
    dense   all-reduce the V x C gradient, and a uint8 touched mask (MAX) for the union;
    gather  all-gather every rank's (row, values), padded to the largest count, and add them up;
    union   all-reduce the touched mask (MAX), then all-reduce values on the union rows only;
    auto    reduce the mask, then whichever of the three sends the fewest bytes;
    factors (reduce_by_factors) all-gather each image's pose, basis weights and slice gradient, about
            (9 + K+1 + 2P) numbers an image instead of 8 x 2(K+1) per slice point, and let every rank
            rebuild the summed gradient of the whole global batch (touched set included) itself.
"""

import dataclasses
import time

import torch
import torch.distributed as dist

from hetrec_dist.physics.projector import basis_gradient, slice_geometry

STRATEGIES = ("dense", "gather", "union")  # reduce_sparse_gradient's; "factors" is reduce_by_factors
INDEX_BYTES = 8


@dataclasses.dataclass
class ReductionStats:
    strategy: str
    bytes_sent: int
    dense_bytes: int        # what a plain dense all-reduce of the gradient would have sent
    union_rows: int
    seconds: float


def allreduce_bytes(n_bytes, world_size):
    return 2 * (world_size - 1) * n_bytes // world_size


def allgather_bytes(n_bytes_per_rank, world_size):
    return (world_size - 1) * n_bytes_per_rank


def payload_bytes(n_rows, n_columns, max_nnz, union_rows, world_size, value_bytes=4):
    """Bytes one rank sends for the gradient values under each strategy (besides the shared counts and,
    for dense, union and auto, the touched-mask all-reduce of n_rows bytes)."""
    row_bytes = n_columns * value_bytes
    return {"dense": allreduce_bytes(n_rows * row_bytes, world_size),
            "gather": allgather_bytes(max_nnz * (row_bytes + INDEX_BYTES), world_size),
            "union": allreduce_bytes(union_rows * row_bytes, world_size)}


def _touched_mask(grad, group):
    mask = torch.zeros(grad.shape[0], dtype=torch.uint8, device=grad.device)
    mask[grad.indices()[0]] = 1
    dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=group)
    return mask.bool()


def _sparse(rows, values, shape):
    return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=True, check_invariants=False)


def _reduce_dense(grad, union, group):
    dense = grad.to_dense()
    dist.all_reduce(dense, group=group)
    rows = union.nonzero().squeeze(1)
    return _sparse(rows, dense[rows], grad.shape)


def _reduce_union(grad, union, group):
    rows = union.nonzero().squeeze(1)
    position = torch.cumsum(union, 0) - 1
    values = grad.values().new_zeros(len(rows), grad.shape[1])
    values[position[grad.indices()[0]]] = grad.values()
    dist.all_reduce(values, group=group)
    return _sparse(rows, values, grad.shape)


def _reduce_gather(grad, group, max_nnz, world_size):
    nnz = grad.values().shape[0]
    rows = torch.full((max_nnz,), -1, dtype=torch.long, device=grad.device)
    rows[:nnz] = grad.indices()[0]
    values = grad.values().new_zeros(max_nnz, grad.shape[1])
    values[:nnz] = grad.values()
    all_rows = [torch.empty_like(rows) for _ in range(world_size)]
    all_values = [torch.empty_like(values) for _ in range(world_size)]
    dist.all_gather(all_rows, rows, group=group)
    dist.all_gather(all_values, values, group=group)
    rows, values = torch.cat(all_rows), torch.cat(all_values)
    real = rows >= 0
    return torch.sparse_coo_tensor(rows[real][None], values[real], grad.shape).coalesce()


def reduce_sparse_gradient(grad, strategy="auto", group=None):
    """Sum a coalesced sparse gradient over the ranks of `group`; returns (sum, ReductionStats).
    auto reduces the touched mask first (to know the union's size), then takes the cheapest payload."""
    if strategy not in STRATEGIES + ("auto",):
        raise ValueError(f"unknown reduction strategy {strategy!r} (one of {', '.join(STRATEGIES)}, auto)")
    started = time.perf_counter()
    world_size = dist.get_world_size(group)
    n_rows, n_columns = grad.shape
    value_bytes = grad.values().element_size()
    counts = torch.tensor([grad.values().shape[0]], dtype=torch.long, device=grad.device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=group)
    max_nnz = int(counts[0])
    sent = allreduce_bytes(counts.element_size(), world_size)
    union = None
    if strategy != "gather":
        union = _touched_mask(grad, group)
        sent += allreduce_bytes(n_rows, world_size)
    if strategy == "auto":
        costs = payload_bytes(n_rows, n_columns, max_nnz, int(union.sum()), world_size, value_bytes)
        strategy = min(costs, key=costs.get)
    if strategy == "dense":
        total = _reduce_dense(grad, union, group)
    elif strategy == "union":
        total = _reduce_union(grad, union, group)
    else:
        total = _reduce_gather(grad, group, max_nnz, world_size)
    union_rows = total.values().shape[0]
    costs = payload_bytes(n_rows, n_columns, max_nnz, union_rows, world_size, value_bytes)
    return total, ReductionStats(strategy, sent + costs[strategy], costs["dense"], union_rows,
                                 time.perf_counter() - started)


def reduce_by_factors(rotations, weights, grad_slices, half_ball, points_2d, group=None):
    """The summed basis gradient of the global batch from every rank's per-image factors: poses
    (B x 3 x 3), basis weights (B x K+1) and slice gradients (B x P x 2). Returns (sum, ReductionStats)."""
    started = time.perf_counter()
    world_size = dist.get_world_size(group)
    n_images, n_components = weights.shape
    packed = torch.cat([rotations.reshape(n_images, 9).to(weights.dtype), weights,
                        grad_slices.reshape(n_images, -1)], dim=1)
    counts = [torch.zeros(1, dtype=torch.long, device=weights.device) for _ in range(world_size)]
    dist.all_gather(counts, torch.tensor([n_images], device=weights.device), group=group)
    counts = [int(c) for c in counts]
    padded = packed.new_zeros(max(counts), packed.shape[1])
    padded[:n_images] = packed
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=group)
    everything = torch.cat([g[:c] for g, c in zip(gathered, counts)])
    all_rotations = everything[:, :9].reshape(-1, 3, 3)
    all_weights = everything[:, 9:9 + n_components]
    all_grads = everything[:, 9 + n_components:].reshape(len(everything), -1, 2)
    geometry = slice_geometry(all_rotations, points_2d, half_ball)
    total = basis_gradient(geometry, all_grads, all_weights, half_ball.n_voxels)
    sent = allgather_bytes(8, world_size) + allgather_bytes(padded.numel() * padded.element_size(), world_size)
    n_columns = 2 * n_components
    dense = payload_bytes(half_ball.n_voxels, n_columns, 0, 0, world_size, weights.element_size())["dense"]
    return total, ReductionStats("factors", sent, dense, total.values().shape[0], time.perf_counter() - started)
