"""The noise power of the images per Fourier shell and optics group, estimated from the model's residuals,
and the likelihood weights it gives (RELION's sigma², Scheres 2012, J. Mol. Biol. 415:406).

Images are normalised by the store's pixel standard deviation, so white noise that dominates the signal has
power about 1 on every coefficient (norm="ortho"). Real noise falls with spatial frequency; an unweighted
squared error then lets the noisy low frequencies outweigh the rest. With the power σ²(g, s) of shell s in
optics group g, the Gaussian log-likelihood of a coefficient is -|data - model|² / (2 σ²): its weight is
1 / σ². The estimate is the mean residual power in each shell over an epoch's images, which includes the
model's own error (as RELION's does); before the first estimate every weight is 1 (white noise).
"""

from collections.abc import Callable

import torch

# Below this power a shell's estimate is taken as this (a shell without noise would get an infinite weight).
MIN_POWER = 1e-3


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
        self._sums = torch.zeros_like(self.power)
        self._counts = torch.zeros_like(self.power)

    @classmethod
    def for_disk(cls, group_values: torch.Tensor, disk_coords: torch.Tensor) -> "NoiseSpectrum":
        return cls(group_values, torch.round(disk_coords.norm(dim=1)))

    def rows(self, groups: torch.Tensor) -> torch.Tensor:
        """The row of each image's optics group (B,)."""
        rows = torch.searchsorted(self.group_values.to(groups.device), groups.long())
        return rows.clamp(max=len(self.group_values) - 1)

    def weights(self, groups: torch.Tensor) -> torch.Tensor:
        """1 / σ² of every half-disk point of each image (B x P), in the images' dtype of float32."""
        power = self.power.to(device=groups.device, dtype=torch.float32)
        return 1.0 / power[self.rows(groups)][:, self.shells.to(groups.device)]

    @torch.no_grad()
    def accumulate(self, residual_power: torch.Tensor, groups: torch.Tensor) -> None:
        """Add a batch's |data - model|² (B x P) to the current epoch's sums."""
        rows = self.rows(groups).cpu()
        shells = self.shells.expand(len(rows), -1)
        flat = (rows[:, None] * self.power.shape[1] + shells).reshape(-1)
        self._sums.view(-1).index_add_(0, flat, residual_power.detach().double().cpu().reshape(-1))
        self._counts.view(-1).index_add_(0, flat, torch.ones(flat.shape, dtype=torch.float64))

    def update(self, sum_over_ranks: Callable[[list], list] = lambda values: values) -> None:
        """The new estimate from the epoch's sums (summed over ranks by sum_over_ranks, a function of a list
        of floats); shells no image reached keep their power. The sums start again."""
        both = sum_over_ranks(torch.cat([self._sums.reshape(-1), self._counts.reshape(-1)]).tolist())
        sums, counts = torch.tensor(both, dtype=torch.float64).view(2, *self.power.shape)
        seen = counts > 0
        self.power[seen] = (sums[seen] / counts[seen]).clamp(min=MIN_POWER)
        self._sums.zero_()
        self._counts.zero_()

    @torch.no_grad()
    def accumulate_background(self, spectra: torch.Tensor, groups: torch.Tensor, kept_fraction: float) -> None:
        """Add the half-disk coefficients (B x P) of images whose particle was masked away: their power,
        divided by the mean squared mask (kept_fraction), is the noise power (Scheres 2012's initial estimate
        from the particle-free corners)."""
        self.accumulate(spectra.abs() ** 2 / kept_fraction, groups)

    def state_dict(self) -> dict:
        return {"group_values": self.group_values.clone(), "power": self.power.clone()}

    def load_state_dict(self, state: dict) -> None:
        if not torch.equal(state["group_values"], self.group_values) or state["power"].shape != self.power.shape:
            raise ValueError("a noise spectrum of other optics groups or shells")
        self.power = state["power"].clone()
