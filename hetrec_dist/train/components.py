"""The features of a training run around its core loop (train.trainer): each a Component, called by the loop
at a few hooks. A feature is its own file, a Component subclass, and one line where train.trainer.Trainer
builds its list (Trainer._components).

The hooks, in the order the loop calls them; each does nothing unless a component overrides it, and every
rank calls each (trainer: the train.trainer.Trainer; its world says which rank this is):
    start(trainer)                 once, before the first epoch this process trains (a resumed run's too):
                                   console lines (trainer.tell, trainer.hint), estimates made once
    on_batch(trainer, batch)       each batch as read, on the CPU, before it goes to the device -> the batch
                                   (an entry it adds may be on the device already)
    after_forward(trainer, batch, out)  after each step's forward (HetVAE.forward's out), before its backward
    after_step(trainer)            after each step's optimizer steps
    step_metrics()                 -> scalars for TensorBoard with each logged step (train.log_every)
    end_epoch(trainer)             at each epoch's end, trainer.epoch counting it: sums over the ranks,
                                   TensorBoard; before the checkpoint
    on_checkpoint(trainer)         after each epoch's checkpoint: the component's files in RUN (rank 0)
    finish(trainer, z)             after the last epoch and z.npy; z: the run's latents on rank 0, else None
    checkpoint_entries()           -> the component's entries of each checkpoint (top-level keys)
    load_checkpoint(checkpoint)    a resumed run's checkpoint: take the entries back

A worked example, a component logging the basis' norm to TensorBoard each epoch (docs/architecture.md):

    class BasisNorm(Component):
        def end_epoch(self, trainer):
            trainer.metrics.scalars({"model/basis_norm": float(trainer.model.basis.norm())}, trainer.epoch)

registered with `BasisNorm(),` in Trainer._components.
"""


class Component:
    """A feature of the training loop (see the module): override the hooks it needs."""

    def start(self, trainer) -> None:
        pass

    def on_batch(self, trainer, batch: dict) -> dict:
        return batch

    def after_forward(self, trainer, batch: dict, out: dict) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def step_metrics(self) -> dict[str, float]:
        return {}

    def end_epoch(self, trainer) -> None:
        pass

    def on_checkpoint(self, trainer) -> None:
        pass

    def finish(self, trainer, z) -> None:
        pass

    def checkpoint_entries(self) -> dict:
        return {}

    def load_checkpoint(self, checkpoint: dict) -> None:
        pass
