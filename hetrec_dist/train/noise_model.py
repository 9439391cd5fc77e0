"""A run's noise model (config noise_model; model.noise): the likelihood's weight of each image's Fourier
points, 1 / σ² of its optics group and shell.

    white       every weight 1; the noise power is still estimated, from the residuals, for
                unequal_groups_line's warning
    residuals   σ² from each epoch's residuals, all ranks' (the weights of epoch e from epoch e - 1's)
    background  σ² from the particle-free corners of up to BACKGROUND_IMAGES images a rank, once, when the run
                starts (or is resumed from another noise model)

TensorBoard shows the power at a few resolutions; RUN/noise_spectrum.json holds all of it.
"""

import json

import numpy as np
import torch

from hetrec_dist.data.atomic_files import write_text
from hetrec_dist.errors import UserError
from hetrec_dist.model.noise import NoiseSpectrum
from hetrec_dist.physics.fourier_grid import squared_magnitude
from hetrec_dist.train.components import Component

BACKGROUND_IMAGES = 2000  # images a rank takes the noise power from (noise_model background)
MIN_BACKGROUND_FRACTION = 0.01  # of the box: less outside the mask is no estimate of the noise
CHECKPOINT_KEY = "noise_spectrum"


class NoiseModel(Component):
    """kind: white, residuals or background; spectrum: the NoiseSpectrum of the run's optics groups;
    from_background: take the power from the images' background when the run starts."""

    def __init__(self, kind: str, spectrum: NoiseSpectrum, from_background: bool):
        self.kind, self.spectrum, self.from_background = kind, spectrum, from_background

    @classmethod
    def for_run(cls, trainer, store, saved):
        groups = store.group["optics_group"][:]
        groups = torch.from_numpy(np.unique(groups if trainer.rows is None else groups[trainer.rows]))
        kind = trainer.config.noise_model
        from_background = kind == "background" and (saved or {}).get("config", {}).get("noise_model") != kind
        return cls(kind, NoiseSpectrum.for_disk(groups, trainer.model.disk.coords.cpu()), from_background)

    def start(self, trainer):
        if self.from_background:
            self._from_background(trainer)
            self.from_background = False

    def on_batch(self, trainer, batch):
        """The batch's noise_weights (B x P), made on the training device from its optics groups (B), as a
        B x P copy would cost a transfer every step."""
        if self.kind == "white":
            return batch
        return {**batch, "noise_weights": self.spectrum.weights(batch["optics_group"].to(trainer.device))}

    def after_forward(self, trainer, batch, out):
        if self.kind != "background":
            self.spectrum.accumulate(out["residual_power"], squared_magnitude(out["observed"]), batch["optics_group"])

    def end_epoch(self, trainer):
        """The new estimate from the epoch's residuals (unless taken from the background); TensorBoard."""
        if self.kind != "background":
            self.spectrum.update(trainer.world.all_sum)
        box_A = trainer.model.shape.box * trainer.model.pixel_size_A
        power = self.spectrum.power
        trainer.metrics.scalars({f"noise/power_{resolution}A": float(power[0, round(box_A / resolution)])
                                 for resolution in (30, 15, 8, 5) if round(box_A / resolution) < power.shape[1]},
                                trainer.epoch)

    def on_checkpoint(self, trainer):
        """On rank 0: RUN/noise_spectrum.json."""
        if not trainer.world.is_root:
            return
        box_A = trainer.model.shape.box * trainer.model.pixel_size_A
        power = self.spectrum.power
        record = {"shell_resolution_A": [box_A / shell if shell else None for shell in range(power.shape[1])],
                  "optics_groups": self.spectrum.group_values.tolist(), "power": power.tolist(),
                  "weight_scale": self.spectrum.scale, "noise_model": self.kind, "epoch": trainer.epoch}
        write_text(trainer.run.noise_spectrum, json.dumps(record, indent=1))

    def checkpoint_entries(self):
        return {CHECKPOINT_KEY: self.spectrum.state_dict()}

    def load_checkpoint(self, checkpoint):
        if CHECKPOINT_KEY in checkpoint:  # checkpoints of hetrec 0.1 have none: white noise so far
            self.spectrum.load_state_dict(checkpoint[CHECKPOINT_KEY])

    @torch.no_grad()
    def _from_background(self, trainer, n_images=BACKGROUND_IMAGES):
        """The noise power from the particle-free corners of up to n_images of each rank's images."""
        seen, mask_diameter_A = 0, trainer.config.mask_diameter_A
        for batch in trainer.data:
            images = {"images": batch["images"].to(trainer.device), "shifts": batch["shifts"].to(trainer.device)}
            spectra, kept = trainer.model.background_spectra(images, mask_diameter_A)
            if kept < MIN_BACKGROUND_FRACTION:
                raise UserError(f"noise_model background: a mask of {mask_diameter_A} Å leaves no particle-free "
                                "pixels in the box to take the noise from; give a smaller --mask-diameter, or "
                                "noise_model residuals")
            self.spectrum.accumulate_background(spectra, kept, trainer.model.observed_spectra(images),
                                                batch["optics_group"])
            seen += len(batch["images"])
            if seen >= n_images:
                break
        self.spectrum.update(trainer.world.all_sum)
