"""Summing the sparse basis gradient over data-parallel ranks, touching only what some rank touched.

Every rank holds its batch's factors of the basis gradient (GradientFactors; physics.projector.SliceFactors:
poses, basis weights, slice gradients); its own basis gradient is a coalesced sparse V x C tensor (C = 2(K+1)
real values a row) built from them.
Every strategy returns the same thing on every rank: the sum over ranks, as a coalesced sparse tensor whose
rows are the union of the rows any rank touched (what one process with the whole global batch would have),
and the exact number of bytes this rank sent, counted for ring collectives (all-reduce of n bytes:
2 (W-1)/W n; all-gather of n bytes a rank: (W-1) n).

Strategies (only collectives that gloo and NCCL both have: all_reduce SUM/MAX, all_gather):
    dense    all-reduce the V x C gradient, and a uint8 touched mask (MAX) for the union;
    gather   all-gather every rank's (row, values), padded to the largest count, and add them up;
    union    all-reduce the touched mask (MAX), then all-reduce values on the union rows only;
    factors  all-gather each image's packed factors (pose, half-set offset, basis weights, slice gradient:
             10 + K+1 + 2P numbers an image) instead of up to 8 x 2(K+1) per slice point, and let every rank
             rebuild the other ranks' gradients (touched sets included) and sum them with its own: fewest
             bytes, most compute;
    auto     reduce the mask, then whichever of the four sends the fewest bytes.
All of them first all-gather two counts a rank (touched rows, images). Where the world sums in shared memory
(CPU ranks of one machine), the sums (dense, union, the mask as float32) go through it (see
distributed.deepspeed_internals).
"""

import dataclasses
import time
from typing import Protocol

import torch
import torch.distributed as dist

from hetrec_dist.distributed.deepspeed_internals import sum_over_ranks, sums_in_shared_memory

STRATEGIES = ("dense", "gather", "union", "factors")
MASK_FIRST = ("dense", "union", "auto")  # the strategies that all-reduce the touched mask
INDEX_BYTES = 8
COUNTS_BYTES = 2 * INDEX_BYTES  # touched rows and images, one int64 each


class GradientFactors(Protocol):
    """What the reducer asks of a rank's batch: the sizes of its basis gradient (n_rows x 2 n_components, on
    touched_rows), the gradient itself, and its factors packed as n_images x packed_width numbers of
    value_bytes each, from which any rank rebuilds that gradient (physics.projector.SliceFactors)."""
    n_rows: int
    touched_rows: torch.Tensor
    n_images: int
    n_components: int
    packed_width: int
    value_bytes: int

    def basis_gradient(self) -> torch.Tensor: ...

    def pack(self) -> torch.Tensor: ...

    def gradient_of_packed(self, packed: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass
class ReductionStats:
    strategy: str
    bytes_sent: int
    dense_bytes: int        # what a plain dense all-reduce of the gradient would have sent
    union_rows: int
    seconds: float


def allreduce_bytes(n_bytes: int, world_size: int) -> int:
    return 2 * (world_size - 1) * n_bytes // world_size


def allgather_bytes(n_bytes_per_rank: int, world_size: int) -> int:
    return (world_size - 1) * n_bytes_per_rank


def payload_bytes(n_rows: int, n_components: int, packed_width: int, max_nnz: int, max_images: int,
                  union_rows: int, world_size: int, value_bytes: int = 4) -> dict[str, int]:
    """Bytes one rank sends for the gradient itself under each strategy (besides the counts and, for dense,
    union and auto, the touched-mask all-reduce of n_rows bytes); packed_width: the numbers an image's factors
    take (GradientFactors.packed_width; physics.projector.factor_columns)."""
    row_bytes = 2 * n_components * value_bytes
    return {"dense": allreduce_bytes(n_rows * row_bytes, world_size),
            "gather": allgather_bytes(max_nnz * (row_bytes + INDEX_BYTES), world_size),
            "union": allreduce_bytes(union_rows * row_bytes, world_size),
            "factors": allgather_bytes(max_images * packed_width * value_bytes, world_size)}


def bytes_sent(strategy: str, payload: dict[str, int], n_rows: int, world_size: int,
               mask_row_bytes: int = 1) -> int:
    """Total bytes a rank sends under `strategy` (auto: the cheapest payload), with the counts and mask."""
    counts = allgather_bytes(COUNTS_BYTES, world_size)
    mask = allreduce_bytes(n_rows * mask_row_bytes, world_size)
    chosen = min(payload.values()) if strategy == "auto" else payload[strategy]
    return counts + chosen + (mask if strategy in MASK_FIRST else 0)


def _all_gather(tensor, group, world_size):
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor, group=group)
    return gathered


def _touched_mask(rows, n_rows, group, timeout_s, in_shared_memory):
    """The union of the rows any rank touched, as a bool mask: a uint8 MAX all-reduce, or where the ranks
    share memory a float32 sum (that kernel sums floats only)."""
    if in_shared_memory:
        mask = torch.zeros(n_rows, dtype=torch.float32)
        mask[rows] = 1
        sum_over_ranks(mask, group, timeout_s, shared_memory=True)
        return mask > 0
    mask = torch.zeros(n_rows, dtype=torch.uint8, device=rows.device)
    mask[rows] = 1
    dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=group)
    return mask.bool()


def _sparse(rows, values, shape):
    return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=True, check_invariants=False)


def _reduce_dense(grad, union, group, timeout_s, shared_memory):
    dense = grad.to_dense()
    sum_over_ranks(dense, group, timeout_s, shared_memory)
    rows = union.nonzero().squeeze(1)
    return _sparse(rows, dense[rows], grad.shape)


def _reduce_union(grad, union, group, timeout_s, shared_memory):
    rows = union.nonzero().squeeze(1)
    position = torch.cumsum(union, 0) - 1
    values = grad.values().new_zeros(len(rows), grad.shape[1])
    values[position[grad.indices()[0]]] = grad.values()
    sum_over_ranks(values, group, timeout_s, shared_memory)
    return _sparse(rows, values, grad.shape)


def _reduce_gather(grad, group, max_nnz, world_size):
    nnz = grad.values().shape[0]
    rows = torch.full((max_nnz,), -1, dtype=torch.long, device=grad.device)
    rows[:nnz] = grad.indices()[0]
    values = grad.values().new_zeros(max_nnz, grad.shape[1])
    values[:nnz] = grad.values()
    rows = torch.cat(_all_gather(rows, group, world_size))
    values = torch.cat(_all_gather(values, group, world_size))
    real = rows >= 0
    return torch.sparse_coo_tensor(rows[real][None], values[real], grad.shape, check_invariants=False).coalesce()


def _sum_in_rank_order(parts, shape):
    """The sum of coalesced sparse tensors, added row by row in list order, so that every rank summing the
    same list gets the same bits."""
    touched = torch.zeros(shape[0], dtype=torch.bool, device=parts[0].device)
    for part in parts:
        touched[part.indices()[0]] = True
    position = torch.cumsum(touched, 0) - 1
    values = parts[0].values().new_zeros(int(touched.sum()), shape[1])
    for part in parts:
        values.index_add_(0, position[part.indices()[0]], part.values())
    return _sparse(touched.nonzero().squeeze(1), values, shape)


def _reduce_factors(factors, image_counts, group, world_size):
    """Every rank's gradient, the other ranks' rebuilt here from their gathered factors, summed in rank
    order (a rank's own gradient is the one it would rebuild: same inputs, same shapes, same bits)."""
    packed = factors.pack()
    padded = packed.new_zeros(max(image_counts), packed.shape[1])
    padded[:len(packed)] = packed
    gathered = _all_gather(padded, group, world_size)
    own, parts = dist.get_rank(group), []
    for rank, (rank_packed, count) in enumerate(zip(gathered, image_counts)):
        if rank == own:
            parts.append(factors.basis_gradient())
        elif count > 0:
            parts.append(factors.gradient_of_packed(rank_packed[:count]))
    return _sum_in_rank_order(parts, (factors.n_rows, 2 * factors.n_components))


def reduce_basis_gradient(factors: GradientFactors, strategy: str, group: dist.ProcessGroup | None = None,
                          timeout_s: float = 600, shared_memory: bool = False) -> tuple[torch.Tensor, ReductionStats]:
    """The basis gradient summed over the ranks of `group`, from each rank's factors (after backward).
    Returns (sum as coalesced sparse tensor, ReductionStats). timeout_s: how long to wait for the other ranks
    where no process-group timeout applies; shared_memory: the world's switch (TrainingWorld.shared_memory)."""
    if strategy not in STRATEGIES + ("auto",):
        raise ValueError(f"unknown reduction strategy {strategy!r} (one of {', '.join(STRATEGIES)}, auto)")
    started = time.perf_counter()
    world_size = dist.get_world_size(group)
    n_rows, n_components = factors.n_rows, factors.n_components
    touched = factors.touched_rows
    counts = torch.tensor([len(touched), factors.n_images], dtype=torch.long, device=touched.device)
    counts = torch.stack(_all_gather(counts, group, world_size)).tolist()
    max_nnz, image_counts = max(c[0] for c in counts), [c[1] for c in counts]
    mask_in_shared_memory = shared_memory and sums_in_shared_memory(touched.device, torch.float32)
    union = (_touched_mask(touched, n_rows, group, timeout_s, mask_in_shared_memory)
             if strategy in MASK_FIRST else None)
    union_rows = int(union.sum()) if union is not None else 0
    payload = payload_bytes(n_rows, n_components, factors.packed_width, max_nnz, max(image_counts), union_rows,
                            world_size, factors.value_bytes)
    sent = bytes_sent(strategy, payload, n_rows, world_size, mask_row_bytes=4 if mask_in_shared_memory else 1)
    if strategy == "auto":
        strategy = min(payload, key=payload.get)
    if strategy == "factors":
        total = _reduce_factors(factors, image_counts, group, world_size)
    else:
        grad = factors.basis_gradient()
        if strategy == "dense":
            total = _reduce_dense(grad, union, group, timeout_s, shared_memory)
        elif strategy == "union":
            total = _reduce_union(grad, union, group, timeout_s, shared_memory)
        else:
            total = _reduce_gather(grad, group, max_nnz, world_size)
    return total, ReductionStats(strategy, sent, payload["dense"], total.values().shape[0],
                                 time.perf_counter() - started)
