"""The optimizer of the dense parameters (encoder, decoder): plain Adam in one process, the same Adam inside
a DeepSpeed engine on several ranks (which broadcasts rank 0's parameters at the start and averages the
gradients over ranks in backward). The structural basis is not in the engine: its sparse gradient goes
through distributed.sparse_reducer and train.row_adam (SparseAdam on the touched rows).
"""

import torch
import torch.distributed as dist

from hetrec_dist.distributed.deepspeed_internals import stop_engine_averaging, sum_over_ranks
from hetrec_dist.distributed.training_world import TrainingWorld


class LocalDenseOptimizer:
    average_in_shared_memory = False  # whether the gradients are averaged through shared memory (see below)

    def __init__(self, module: torch.nn.Module, lr: float):
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class DeepSpeedDenseOptimizer(LocalDenseOptimizer):
    """Where the world sums in shared memory (CPU ranks of one machine), the gradients are averaged through
    it (one flat float32 sum) instead of by the engine's all-reduce over gloo."""

    def __init__(self, module: torch.nn.Module, lr: float, micro_batch_size: int, timeout_s: float,
                 shared_memory: bool):
        import deepspeed

        super().__init__(module, lr)
        config = {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": 1,
                  "steps_per_print": 2 ** 31 - 1, "wall_clock_breakdown": False}
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=self.optimizer,
                                                                 config=config, dist_init_required=False)
        self.timeout_s = timeout_s
        kinds = {(p.device, p.dtype) for p in module.parameters()}
        self.average_in_shared_memory = shared_memory and kinds == {(torch.device("cpu"), torch.float32)}
        if self.average_in_shared_memory:
            stop_engine_averaging(self.engine)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        if self.average_in_shared_memory:
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            flat = torch.cat([grad.reshape(-1) for grad in grads])
            sum_over_ranks(flat, dist.group.WORLD, self.timeout_s, shared_memory=True)
            flat /= dist.get_world_size()
            for grad, average in zip(grads, flat.split([grad.numel() for grad in grads])):
                grad.copy_(average.view_as(grad))

    def step(self) -> None:
        self.engine.step()


def dense_optimizer(world: TrainingWorld, module: torch.nn.Module, lr: float, micro_batch_size: int,
                    timeout_s: float) -> LocalDenseOptimizer:
    """LocalDenseOptimizer in one process, DeepSpeedDenseOptimizer on the ranks of `world`."""
    if world.size == 1:
        return LocalDenseOptimizer(module, lr)
    return DeepSpeedDenseOptimizer(module, lr, micro_batch_size, timeout_s, world.shared_memory)
