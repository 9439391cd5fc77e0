"""Half-sets during training (`hetrec train --half-sets`): each particle trains the basis of its own half-set
(HetVAE with n_half_sets 2; which particle is in which: data.half_sets), so that the two halves' maps are
independent and their FSC (`hetrec fsc`) is a resolution. The half-sets are chosen when the run starts, kept in
RUN/half_sets.npy and every checkpoint, and a resumed run keeps its own.
"""

import torch

from hetrec_dist.data.half_sets import check_run_half_sets, checkpoint_half_sets, choose_half_sets, write_run_half_sets
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.train.components import Component

CHECKPOINT_KEY = "half_sets"


class HalfSets(Component):
    """values: each store particle's half-set (N int8 tensor: 1 or 2, 0 for a particle outside the run);
    source: where they came from, in words."""

    def __init__(self, values: torch.Tensor, source: str):
        self.values, self.source = values, source

    @classmethod
    def for_run(cls, trainer, store, saved):
        """A resumed run's, from its checkpoint (RUN/half_sets.npy must hold the same), else chosen here (the
        same on every rank); rank 0 writes RUN/half_sets.npy. None for a run without half-sets."""
        if not trainer.config.half_sets:
            return None
        world, run_dir = trainer.world, trainer.run_dir
        if saved is not None:
            values = world.run_everywhere(lambda: checkpoint_half_sets(saved, run_dir, store.n_particles))
            world.run_on_root(lambda: check_run_half_sets(run_dir, values))
            return cls(torch.from_numpy(values), "as the run recorded them")
        values, source = world.run_everywhere(lambda: choose_half_sets(store.group, trainer.config.seed,
                                                                       trainer.rows))
        world.run_on_root(lambda: write_run_half_sets(run_dir, values))
        return cls(torch.from_numpy(values), source)

    def start(self, trainer):
        trained = self.values if trainer.rows is None else self.values[torch.from_numpy(trainer.rows)]
        counts = torch.bincount(trained.long(), minlength=3)[1:].tolist()
        trainer.tell(f"half-sets: {counts[0]} and {counts[1]} particles, {self.source}, in "
                     f"{RunFolder.name(trainer.run.half_sets)}; each trains its own basis")
        if min(counts) < 0.5 * max(counts):
            trainer.hint(f"the half-sets are unequal ({counts[0]} and {counts[1]} particles): the smaller one's "
                         "maps are noisier, and the half-map resolution reads worse than the full map's")

    def on_batch(self, trainer, batch):
        return {**batch, "half_set": self.values[batch["index"]]}

    def after_step(self, trainer):
        trainer.model.join_half_sets()  # the halves' coarse coefficients, apart after the step, joined again

    def checkpoint_entries(self):
        return {CHECKPOINT_KEY: self.values.clone()}
