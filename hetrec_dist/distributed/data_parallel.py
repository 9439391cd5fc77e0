"""What the training loop asks of the data-parallel ranks, and nothing of how they talk.

A step's global batch is the union of the ranks' batches; its gradients are those of the mean loss over the
global batch: the dense ones averaged over ranks by the dense optimizer (distributed.dense_engine), the
basis one summed from every rank's slice factors (distributed.sparse_reducer) and divided by the number of
ranks. Both optimizers' steps and state are here. In one process every call is the plain single-process
operation.
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
    basis_optimizer: the optimizer of the basis (one parameter, whose gradient is sparse: train.row_adam);
    basis_reduction: a sparse_reducer strategy or "auto".
    """

    def __init__(self, world: TrainingWorld, dense_module: torch.nn.Module, lr: float, batch_size: int,
                 basis_optimizer: torch.optim.Optimizer, basis_reduction: str, timeout_s: float):
        self.world, self.basis_reduction, self.timeout_s = world, basis_reduction, timeout_s
        self.dense = dense_optimizer(world, dense_module, lr, batch_size, timeout_s)
        self.basis_optimizer = basis_optimizer
        (self.basis,) = (p for group in basis_optimizer.param_groups for p in group["params"])

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

    def basis_gradient(self, factors: GradientFactors) -> ReductionStats | None:
        """Set the basis' gradient to that of the global batch's mean loss (sparse, from every rank's `factors`);
        returns the ReductionStats, None in one process."""
        if self.world.size == 1:
            self.basis.grad = factors.basis_gradient()
            return None
        total, stats = reduce_basis_gradient(factors, self.basis_reduction, self.world.group, self.timeout_s,
                                             self.world.shared_memory)
        self.basis.grad = torch.sparse_coo_tensor(total.indices(), total.values() / self.world.size, total.shape,
                                                  is_coalesced=True, check_invariants=False)
        return stats

    def step(self) -> None:
        """Both optimizers' steps: the dense parameters' and the basis'."""
        self.dense.step()
        self.basis_optimizer.step()
        self.basis_optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """Both optimizers' state, as the checkpoint's dense_optimizer and basis_optimizer."""
        return {"dense_optimizer": self.dense.state_dict(), "basis_optimizer": self.basis_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense_optimizer"])
        self.basis_optimizer.load_state_dict(state["basis_optimizer"])

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

