"""What the training loop asks of the data-parallel ranks, and nothing of how they talk.

A step's global batch is the union of the ranks' batches; its gradients are those of the mean loss over the
global batch: the dense ones averaged over ranks by the dense optimizer (distributed.dense_engine), the
basis one summed from every rank's slice factors (distributed.sparse_reducer) and divided by the number of
ranks. In one process every call is the plain single-process operation.
"""

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.distributed as dist

from hetrec_dist.distributed.dense_engine import dense_optimizer
from hetrec_dist.distributed.sparse_reducer import GradientFactors, ReductionStats, reduce_basis_gradient
from hetrec_dist.distributed.training_world import TrainingWorld
from hetrec_dist.errors import UserError


class RankLost(UserError):
    """Another rank died or stopped answering: this rank stops too (resume from the last checkpoint)."""


@dataclasses.dataclass(frozen=True)
class BatchShare:
    """This rank's part of a step's global batch: images offset .. offset + size of n_global."""
    n_global: int
    offset: int
    size: int
    world_size: int

    def own(self, per_global_image: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor with one row per image of the global batch."""
        return per_global_image[self.offset:self.offset + self.size]

    @property
    def loss_scale(self) -> float:
        """Makes the ranks' average of their mean losses the mean over the global batch."""
        return self.size * self.world_size / self.n_global


class DataParallel:
    """The ranks of `world` (a TrainingWorld) training one model together.

    dense_module: the parameters with ordinary gradients (encoder, decoder), optimised by Adam at `lr`;
    basis_reduction: a sparse_reducer strategy or "auto".
    """

    def __init__(self, world: TrainingWorld, dense_module: torch.nn.Module, lr: float, batch_size: int,
                 basis_reduction: str, timeout_s: float):
        self.world, self.basis_reduction, self.timeout_s = world, basis_reduction, timeout_s
        self.dense = dense_optimizer(world, dense_module, lr, batch_size, timeout_s)

    def describe(self) -> str:
        return f"{self.world.size} rank(s)" + (" (ranks sum gradients through shared memory)"
                                               if self.world.shared_memory else "")

    def hints(self) -> list:
        """Lines for the user about how these ranks were set up."""
        hints = list(self.world.hints)
        if self.world.shared_memory and self.basis_reduction == "auto":
            hints.append("basis_reduction auto sends the fewest bytes (the factors), but CPU ranks on one machine "
                         "are short of compute, not bandwidth: --basis-reduction union is faster here")
        return hints

    def share(self, local_size: int) -> BatchShare | None:
        """Agree on the step's global batch: this rank's BatchShare, or None where some rank has no batch
        (the epoch ends at the first such step)."""
        sizes = [n for n, in self.world.all_gather_ints([local_size])]
        if min(sizes) == 0:
            return None
        rank = self.world.rank
        return BatchShare(sum(sizes), sum(sizes[:rank]), sizes[rank], self.world.size)

    def backward(self, loss: torch.Tensor, share: BatchShare) -> None:
        """Dense gradients of the global batch's mean loss, from this rank's mean loss."""
        self.dense.backward(loss * share.loss_scale)

    def basis_gradient(self, factors: GradientFactors) -> tuple[torch.Tensor, ReductionStats | None]:
        """(the basis gradient of the global batch's mean loss, ReductionStats or None in one process)."""
        if self.world.size == 1:
            return factors.basis_gradient(), None
        total, stats = reduce_basis_gradient(factors, self.basis_reduction, self.world.group, self.timeout_s,
                                             self.world.shared_memory)
        mean = torch.sparse_coo_tensor(total.indices(), total.values() / self.world.size, total.shape,
                                       is_coalesced=True, check_invariants=False)
        return mean, stats

    def step(self) -> None:
        """The dense optimizer's step (the basis has its own optimizer)."""
        self.dense.step()

    def state_dict(self) -> dict:
        return self.dense.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state)

    @contextlib.contextmanager
    def lost_peers_stop_here(self, resume_hint: str) -> Iterator[None]:
        """Turns the transport's report of a dead or silent peer into RankLost with `resume_hint`."""
        try:
            yield
        except RuntimeError as err:  # gloo reports a lost peer as a plain RuntimeError
            if self.world.size == 1 or not (isinstance(err, dist.DistError) or "gloo" in str(err)):
                raise
            reason = str(err).strip().splitlines()[0].split("] ")[-1].split(". ")[0]
            raise RankLost(f"rank {self.world.rank} of {self.world.size} lost contact with the other ranks "
                           f"({reason}); {resume_hint}") from None

