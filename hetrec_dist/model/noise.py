"""The noise power of the images per Fourier shell and optics group, estimated from the model's residuals,
and the likelihood weights it gives (RELION's sigma², Scheres 2012, J. Mol. Biol. 415:406).

Images are normalised by the store's pixel standard deviation, so white noise that dominates the signal has
power about 1 on every coefficient (norm="ortho"). Real noise falls with spatial frequency; an unweighted
squared error then lets the noisy low frequencies outweigh the rest. With the power σ²(g, s) of shell s in
optics group g, the Gaussian log-likelihood of a coefficient is -|data - model|² / (2 σ²): its weight is
1 / σ². The estimate is the mean residual power in each shell over an epoch's images, which includes the
model's own error (as RELION's does); before the first estimate every weight is 1 (white noise).

The weights are scaled so that their mean over the points of all groups, weighted by the signal power S (the
data's power less the noise's, per shell and group), is 1: c / σ² with c = Σ S / Σ (S / σ²). Their shape
across shells and their ratios between optics groups follow σ²; their scale stays that of the white model
(c = 1 under white noise), so the balance with the KL term at the frequencies that hold the signal and the
step sizes do not change with the noise model.

What the weighting does (docs/benchmarks.md). The basis' optimizer (Adam) scales each coefficient's steps
by their own size, so weights equal for all images of a shell change the basis little: the gain is in the
ratios between optics groups, where the images of a noisy group stop counting as much as clean ones (maps
much closer to the truth). Across shells, with simulated falling noise, the weighted runs' latents lost the
motion, their variance spread evenly over all directions as when they fit noise, for maps hardly better
("Noise models" in docs/benchmarks.md). Hence white by default, and a warning when the groups' noise differs
(unequal_groups_line).
"""

from collections.abc import Callable

import torch

from hetrec_dist.physics.fourier_grid import squared_magnitude

# Below this power a shell's estimate is taken as this (a shell without noise would get an infinite weight).
MIN_POWER = 1e-3
# Data with less signal than this fraction of its power are taken as noise only: weights 1 / σ², unscaled.
SIGNAL_FRACTION = 1e-6


class NoiseSpectrum:
    """σ² per (optics group, shell) of the half-disk points; shells are integer radii in pixels.

    group_values: the optics groups' numbers in the store (their order is the rows' order); shells_of_points:
    the shell of each half-disk point (P,), from HalfDisk.coords.
    """

    def __init__(self, group_values: torch.Tensor, shells_of_points: torch.Tensor):
        self.group_values = group_values.long()
        self.shells = shells_of_points.long()
        n_shells = int(self.shells.max()) + 1
        self.power = torch.ones(len(group_values), n_shells, dtype=torch.float64)
        self.scale = 1.0
        self._sums = torch.zeros_like(self.power)
        self._data_sums = torch.zeros_like(self.power)
        self._counts = torch.zeros_like(self.power)
        self._points_per_shell = torch.bincount(self.shells, minlength=n_shells).double()

    @classmethod
    def for_disk(cls, group_values: torch.Tensor, disk_coords: torch.Tensor) -> "NoiseSpectrum":
        return cls(group_values, torch.round(disk_coords.norm(dim=1)))

    def rows(self, groups: torch.Tensor) -> torch.Tensor:
        """The row of each image's optics group (B,)."""
        rows = torch.searchsorted(self.group_values.to(groups.device), groups.long())
        return rows.clamp(max=len(self.group_values) - 1)

    def weights(self, groups: torch.Tensor) -> torch.Tensor:
        """c / σ² of every half-disk point of each image (B x P), float32 (see the module's doc for c)."""
        weights = (self.scale / self.power).to(device=groups.device, dtype=torch.float32)
        return weights[self.rows(groups)][:, self.shells.to(groups.device)]

    @torch.no_grad()
    def accumulate(self, noise_power: torch.Tensor, data_power: torch.Tensor, groups: torch.Tensor) -> None:
        """Add a batch's noise power (the residuals' |data - model|², or the background's) and the data's
        |data|² (both B x P) to the current epoch's sums."""
        rows = self.rows(groups).cpu()
        # each image's shells summed where the power lies, in its dtype, rather than a float64 copy of all B x P
        # points sent to the CPU and added one by one
        shells = self.shells.to(noise_power.device)
        for sums, power in ((self._sums, noise_power), (self._data_sums, data_power)):
            per_image = power.new_zeros(len(power), sums.shape[1]).index_add_(1, shells, power.detach())
            sums.index_add_(0, rows, per_image.double().cpu())
        self._counts.index_add_(0, rows, self._points_per_shell.expand(len(rows), -1))

    def update(self, sum_over_ranks: Callable[[list], list] = lambda values: values) -> None:
        """The new estimate from the epoch's sums (summed over ranks by sum_over_ranks, a function of a list
        of floats); shells no image reached keep their power. The sums start again."""
        sums = torch.stack([self._sums, self._data_sums, self._counts])
        noise, data, counts = torch.tensor(sum_over_ranks(sums.reshape(-1).tolist()),
                                           dtype=torch.float64).view(sums.shape)
        seen = counts > 0
        self.power[seen] = (noise[seen] / counts[seen]).clamp(min=MIN_POWER)
        signal = (data - counts * self.power).clamp(min=0) * seen  # summed over each shell's points
        some_signal = float(signal.sum()) > SIGNAL_FRACTION * float(data.sum())
        self.scale = float(signal.sum() / (signal / self.power).sum()) if some_signal else 1.0
        for running in (self._sums, self._data_sums, self._counts):
            running.zero_()

    @torch.no_grad()
    def accumulate_background(self, spectra: torch.Tensor, kept_fraction: float, data_spectra: torch.Tensor,
                              groups: torch.Tensor) -> None:
        """Add the half-disk coefficients (B x P) of images whose particle was masked away: their power,
        divided by the mean squared mask (kept_fraction), is the noise power (Scheres 2012's initial estimate
        from the particle-free corners). data_spectra: the same images' coefficients unmasked."""
        self.accumulate(squared_magnitude(spectra) / kept_fraction, squared_magnitude(data_spectra), groups)

    def state_dict(self) -> dict:
        return {"group_values": self.group_values.clone(), "power": self.power.clone(), "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        if not torch.equal(state["group_values"], self.group_values) or state["power"].shape != self.power.shape:
            raise ValueError("a noise spectrum of other optics groups or shells")
        self.power = state["power"].clone()
        self.scale = float(state.get("scale", 1.0))


# Optics groups whose noise power differs by at least this factor are worth weighting (docs/benchmarks.md).
UNEQUAL_GROUPS_RATIO = 2.0


def unequal_groups_line(spectrum: NoiseSpectrum) -> str | None:
    """A line for the user when the optics groups' noise power (the mean over shells) differs by at least
    UNEQUAL_GROUPS_RATIO; None otherwise."""
    if len(spectrum.group_values) < 2:
        return None
    levels = spectrum.power[:, 1:].mean(1) if spectrum.power.shape[1] > 1 else spectrum.power[:, 0]
    ratio = float(levels.max() / levels.min())
    if ratio < UNEQUAL_GROUPS_RATIO:
        return None
    quietest, noisiest = (int(spectrum.group_values[int(i)]) for i in (levels.argmin(), levels.argmax()))
    return (f"the optics groups' noise power differs up to {ratio:.1f} x (group {noisiest} against group "
            f"{quietest}); noise_model: background in a --config file weights each group by its own, which "
            "recovers the maps better on such data (README, 'Noise')")
