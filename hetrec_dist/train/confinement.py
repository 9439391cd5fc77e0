"""The basis confined in real space (HetVAE.confine_basis; physics.maps.SupportProjector): to a sphere of
mask_diameter_A, after mask_warmup_epochs to the envelope of the model's density too (mask envelope), and with
a focus mask every volume but the mean to that mask as well (train.focus_mask). Every mask_every steps and at
each epoch's end, so that the maps a checkpoint holds are confined whatever the number of steps. RUN/mask.mrc
shows the current mask, RUN/focus_mask.mrc the focus mask as trained.
"""

import torch

from hetrec_dist.data.map_files import write_map
from hetrec_dist.train import focus_mask
from hetrec_dist.train.components import Component


class BasisConfinement(Component):
    """projector: the run's SupportProjector (its mask the current one); focus: the run's FocusMask or None."""

    def __init__(self, projector, focus: focus_mask.FocusMask | None, config):
        self.projector, self.focus = projector, focus
        self.every, self.warmup_epochs, self.follow_envelope = (config.mask_every, config.mask_warmup_epochs,
                                                                config.mask == "envelope")

    @classmethod
    def for_run(cls, trainer, store, saved, focus):
        """focus: a new run's focus mask (focus_mask.for_new_run, read before the run's folder is made), or None;
        a resumed run takes its own (focus_mask.for_resumed_run). A new focused run's basis starts confined."""
        config = trainer.config
        projector = trainer.model.support_projector(config.mask_diameter_A, config.mask_threshold)
        if saved is not None:
            focus = trainer.world.run_everywhere(lambda: focus_mask.for_resumed_run(
                config.focus_mask, trainer.run_dir, store.box, store.pixel_size_A, saved))
        if focus is not None:
            projector.set_focus(torch.from_numpy(focus.values))
            trainer.world.run_everywhere(lambda: focus_mask.check_inside(projector, focus))
            trainer.model.confine_basis(projector)  # the start too: nothing varies outside the focus
        return cls(projector, focus, config)

    def confine(self, model, epoch: int) -> None:
        """The basis confined during `epoch` (counted from 0)."""
        model.confine_basis(self.projector, follow_envelope=self.follow_envelope and epoch >= self.warmup_epochs)

    def start(self, trainer):
        """The focus mask described, and kept as trained in RUN/focus_mask.mrc (a failed write stops every rank
        together)."""
        if self.focus is not None:
            trainer.tell(self.focus.describe())
            trainer.world.run_on_root(lambda: focus_mask.write(trainer.run_dir, self.focus,
                                                               trainer.model.pixel_size_A))

    def after_step(self, trainer):
        if trainer.step % self.every == 0:
            self.confine(trainer.model, trainer.epoch)

    def step_metrics(self):
        return {"mask/volume_fraction": float(self.projector.mask.mean())}

    def end_epoch(self, trainer):
        if trainer.step % self.every:  # not confined after the epoch's last step yet
            self.confine(trainer.model, trainer.epoch - 1)

    def on_checkpoint(self, trainer):
        """On rank 0: RUN/mask.mrc, the current mask."""
        if trainer.world.is_root:
            write_map(trainer.run.mask, self.projector.mask_map(trainer.model.shape.box), trainer.model.pixel_size_A)

    def checkpoint_entries(self):
        return {} if self.focus is None else {"focus_mask_sha256": self.focus.sha256}
