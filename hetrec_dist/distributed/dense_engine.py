"""The optimizer of the dense parameters (encoder, decoder): plain Adam in one process, the same Adam inside
a DeepSpeed engine on several ranks (which broadcasts rank 0's parameters at the start and averages the
gradients over ranks in backward). The structural basis is not in the engine: its sparse gradient goes
through distributed.sparse_reducer and torch's SparseAdam.
"""

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from hetrec_dist.distributed.shared_memory import sum_over_ranks, sums_in_shared_memory


class LocalDenseOptimizer:
    average_in_shared_memory = False  # whether the gradients are averaged through shared memory (see below)

    def __init__(self, module, lr):
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)


class DeepSpeedDenseOptimizer(LocalDenseOptimizer):
    """On CPU ranks that share one machine, the gradients are averaged through shared memory (one flat
    float32 sum) instead of the engine's all-reduce over gloo (see distributed.shared_memory)."""

    def __init__(self, module, lr, micro_batch_size, timeout_s):
        import deepspeed

        super().__init__(module, lr)
        config = {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": 1,
                  "steps_per_print": 2 ** 31 - 1, "wall_clock_breakdown": False}
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=self.optimizer,
                                                                 config=config, dist_init_required=False)
        self.timeout_s = timeout_s
        kinds = {(p.device, p.dtype) for p in module.parameters()}  # one flat tensor needs one kind
        self.average_in_shared_memory = len(kinds) == 1 and sums_in_shared_memory(*kinds.pop(), dist.group.WORLD)
        if self.average_in_shared_memory:
            self.engine.enable_backward_allreduce = False

    def backward(self, loss):
        self.engine.backward(loss)
        if self.average_in_shared_memory:
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            flat = _flatten_dense_tensors(grads)
            sum_over_ranks(flat, dist.group.WORLD, self.timeout_s)
            flat /= dist.get_world_size()
            for grad, average in zip(grads, _unflatten_dense_tensors(flat, grads)):
                grad.copy_(average)

    def step(self):
        self.engine.step()


def dense_optimizer(world, module, lr, micro_batch_size, timeout_s):
    if world.size == 1:
        return LocalDenseOptimizer(module, lr)
    return DeepSpeedDenseOptimizer(module, lr, micro_batch_size, timeout_s)
