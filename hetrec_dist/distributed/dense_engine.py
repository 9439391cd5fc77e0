"""The optimizer of the dense parameters (encoder, decoder): plain Adam in one process, the same Adam inside
a DeepSpeed engine on several ranks (which broadcasts rank 0's parameters at the start and averages the
gradients over ranks in backward). The structural basis is not in the engine: its sparse gradient goes
through distributed.sparse_reducer and torch's SparseAdam.
"""

import torch

from hetrec_dist.train.checkpoint import save_checkpoint, save_deepspeed_checkpoint


class LocalDenseOptimizer:
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

    def save_checkpoint(self, directory, state, epoch, keep_epoch_file):
        save_checkpoint(directory, state, epoch, keep_epoch_file)


class DeepSpeedDenseOptimizer(LocalDenseOptimizer):
    def __init__(self, module, lr, micro_batch_size):
        import deepspeed

        super().__init__(module, lr)
        config = {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": 1,
                  "steps_per_print": 2 ** 31 - 1, "wall_clock_breakdown": False}
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=self.optimizer,
                                                                 config=config, dist_init_required=False)

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self):
        self.engine.step()

    def save_checkpoint(self, directory, state, epoch, keep_epoch_file):
        """On every rank: DeepSpeed writes it."""
        save_deepspeed_checkpoint(self.engine, directory, state, epoch, keep_epoch_file)


def dense_optimizer(world, module, lr, micro_batch_size):
    if world.size == 1:
        return LocalDenseOptimizer(module, lr)
    return DeepSpeedDenseOptimizer(module, lr, micro_batch_size)
