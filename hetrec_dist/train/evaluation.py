"""An evaluation of the run during training (`hetrec train --gt`: analysis.ground_truth.run_evaluator):
called on rank 0 with the latents of the run's particles after the last epoch and every eval_every epochs
before it, its line in train.log.
"""

from hetrec_dist.train.components import Component


class Evaluation(Component):
    """evaluate(model, z, epoch, metrics, rows) -> a line for train.log (rows: the run's store rows, None for
    all); every: the epochs between evaluations before the last (0: the last only)."""

    def __init__(self, evaluate, every: int):
        self.evaluate, self.every = evaluate, every

    def on_checkpoint(self, trainer):
        epoch = trainer.epoch
        if self.every and epoch % self.every == 0 and epoch < trainer.config.epochs:
            self._evaluate(trainer, trainer.gather_latents())

    def finish(self, trainer, z):
        self._evaluate(trainer, z)

    def _evaluate(self, trainer, z):
        if trainer.world.is_root:
            line = self.evaluate(trainer.model, z, trainer.epoch, trainer.metrics, trainer.rows)
            trainer.log.info(f"epoch {trainer.epoch} eval: {line}")
