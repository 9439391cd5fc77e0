"""The noise power per shell and optics group (model.noise.NoiseSpectrum): estimated from residuals, turned
into likelihood weights, kept in checkpoints."""

import numpy as np
import torch

from hetrec_dist.model.noise import MIN_POWER, NoiseSpectrum
from hetrec_dist.physics.fourier_grid import HalfDisk


def test_the_estimate_is_the_mean_residual_power_of_each_shell_and_group():
    disk = HalfDisk.build(32, 15)
    spectrum = NoiseSpectrum.for_disk(torch.tensor([2, 7]), disk.coords)
    shells = torch.round(disk.coords.norm(dim=1)).long()
    truth = {2: 1.0 + 4.0 * torch.exp(-shells.double() / 4), 7: torch.full(shells.shape, 0.5, dtype=torch.float64)}
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        groups = torch.tensor([2, 7, 7, 2, 2, 7, 2, 7])
        noise = torch.complex(torch.randn(8, len(shells), generator=generator, dtype=torch.float64),
                              torch.randn(8, len(shells), generator=generator, dtype=torch.float64)) / np.sqrt(2)
        scale = torch.stack([truth[int(g)] for g in groups]).sqrt()
        spectrum.accumulate((noise * scale).abs() ** 2, groups)
    spectrum.update()
    for row, group in enumerate((2, 7)):
        counts = torch.bincount(shells)
        seen = counts > 0
        expected = torch.bincount(shells, weights=truth[group]) / counts.clamp(min=1)
        relative = (spectrum.power[row][seen] - expected[seen]).abs() / expected[seen]
        assert relative[3:].max() < 0.12 and relative.mean() < 0.06, relative  # few points in the lowest shells
    weights = spectrum.weights(torch.tensor([7, 2]))
    torch.testing.assert_close(weights[0].double(), 1 / spectrum.power[1][shells], rtol=1e-6, atol=0)
    torch.testing.assert_close(weights[1].double(), 1 / spectrum.power[0][shells], rtol=1e-6, atol=0)


def test_white_until_estimated_floored_and_kept_in_a_state_dict():
    disk = HalfDisk.build(16, 7)
    spectrum = NoiseSpectrum.for_disk(torch.tensor([1]), disk.coords)
    assert torch.equal(spectrum.weights(torch.tensor([1, 1])), torch.ones(2, disk.coords.shape[0]))
    spectrum.accumulate(torch.zeros(1, disk.coords.shape[0]), torch.tensor([1]))
    spectrum.update()
    assert (spectrum.power == MIN_POWER).all()  # a shell without noise would get an infinite weight
    other = NoiseSpectrum.for_disk(torch.tensor([1]), disk.coords)
    other.load_state_dict(spectrum.state_dict())
    assert torch.equal(other.power, spectrum.power)


def test_the_background_estimate_sees_the_noise_and_not_the_particle():
    from hetrec_dist.model.hetvae import HetVAE
    from hetrec_dist.train.config import TrainConfig

    box = 64
    model = HetVAE(TrainConfig(zdim=1, n_basis=1).model_shape(box, 2.0), pixel_size_A=2.0)
    generator = torch.Generator().manual_seed(1)
    grid = torch.arange(box) - box // 2
    particle = 50.0 * ((grid[:, None] ** 2 + grid[None, :] ** 2) < 12 ** 2).float()
    spectrum = NoiseSpectrum.for_disk(torch.tensor([1]), model.disk.coords)
    for _ in range(10):
        images = particle + 2.0 * torch.randn(32, box, box, generator=generator)
        spectra, kept = model.background_spectra({"images": images})
        spectrum.accumulate_background(spectra, torch.ones(32, dtype=torch.long), kept)
    spectrum.update()
    power = spectrum.power[0][2:]  # white noise of variance 4: power 4 in every shell
    assert (power - 4.0).abs().max() < 0.6 and abs(power.mean() - 4.0) < 0.15, power
