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
        power = (noise * scale).abs() ** 2
        spectrum.accumulate(power, power, groups)  # pure noise: no signal, the weights are 1 / σ²
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


def test_the_estimate_equals_the_mean_power_of_each_shell_and_group_over_the_batches():
    """Against numpy's sums of every point's power by (optics group, shell), over batches of float32 powers."""
    disk = HalfDisk.build(32, 15)
    spectrum = NoiseSpectrum.for_disk(torch.tensor([3, 5, 9]), disk.coords)
    shells = np.round(np.linalg.norm(disk.coords.numpy(), axis=1)).astype(int)
    rng = np.random.default_rng(1)
    sums, counts = np.zeros((3, shells.max() + 1)), np.zeros((3, shells.max() + 1))
    for _ in range(3):
        groups = rng.choice([3, 5], size=7)  # group 9 gets no image
        power = rng.exponential(size=(7, len(shells))).astype(np.float32) * (1 + groups[:, None])
        spectrum.accumulate(torch.from_numpy(power), torch.from_numpy(2 * power), torch.from_numpy(groups))
        for image, group in enumerate(groups):
            np.add.at(sums[[3, 5, 9].index(group)], shells, power[image].astype(np.float64))
            np.add.at(counts[[3, 5, 9].index(group)], shells, 1)
    spectrum.update()
    np.testing.assert_allclose(spectrum.power[:2].numpy(), sums[:2] / counts[:2], rtol=1e-6)
    np.testing.assert_array_equal(spectrum.power[2].numpy(), 1.0)  # unseen: white, as before


def test_white_until_estimated_floored_and_kept_in_a_state_dict():
    disk = HalfDisk.build(16, 7)
    spectrum = NoiseSpectrum.for_disk(torch.tensor([1]), disk.coords)
    assert torch.equal(spectrum.weights(torch.tensor([1, 1])), torch.ones(2, disk.coords.shape[0]))
    spectrum.accumulate(torch.zeros(1, disk.coords.shape[0]), torch.zeros(1, disk.coords.shape[0]), torch.tensor([1]))
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
        spectrum.accumulate_background(spectra, kept, spectra, torch.ones(32, dtype=torch.long))
    spectrum.update()
    power = spectrum.power[0][2:]  # white noise of variance 4: power 4 in every shell
    assert (power - 4.0).abs().max() < 0.6 and abs(power.mean() - 4.0) < 0.15, power


def test_the_weights_average_one_over_the_signal():
    """c / σ²: weighted by the signal power, the weights' mean is 1; white noise leaves them all 1."""
    disk = HalfDisk.build(32, 15)
    shells = torch.round(disk.coords.norm(dim=1)).long()
    signal = 10.0 * torch.exp(-shells.double() / 3)  # signal power falls faster than the noise
    for noise_power, white in ((1.0 + 4.0 * torch.exp(-shells.double() / 6), False),
                               (torch.full(shells.shape, 2.0, dtype=torch.float64), True)):
        spectrum = NoiseSpectrum.for_disk(torch.tensor([1]), disk.coords)
        spectrum.accumulate(noise_power[None], (signal + noise_power)[None], torch.tensor([1]))
        spectrum.update()
        weights = spectrum.weights(torch.tensor([1]))[0].double()
        torch.testing.assert_close((signal * weights).sum() / signal.sum(), torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(weights * noise_power, torch.full_like(weights, spectrum.scale))
        assert (abs(spectrum.scale - 2.0) < 1e-9) == white  # c = σ² where the noise is white


def test_weighting_by_the_noise_of_each_optics_group_recovers_the_maps_better(tmp_path):
    """Coloured noise (falling with frequency) at SNR 0.2 in one optics group and 0.005 in the other: weighted
    by the noise power of each group and shell (noise_model background), the maps come closer to the truth
    than unweighted, which lets the noisy group's images count as much as the clean ones'. (Measured: mean
    FSC 0.75 against 0.44; with one group of falling noise the gain is small: docs/benchmarks.md.)"""
    import json

    from conftest import run_cli

    from hetrec_dist.simulate.atom_models import hinge_model
    from hetrec_dist.simulate.dataset import simulate_dataset

    simulate_dataset(str(tmp_path / "sim"), hinge_model(), n=800, box=32, snr=(0.2, 0.005),
                     noise_spectrum="falling", seed=4, show_progress=False)
    run_cli("convert", tmp_path / "sim" / "particles.star", "-o", tmp_path / "p.zarr", "-q")
    (tmp_path / "background.yaml").write_text("noise_model: background\n")
    scores = {}
    for noise_model in ("white", "background"):
        config = ["--config", tmp_path / "background.yaml"] if noise_model == "background" else []
        run_cli("train", tmp_path / "p.zarr", "-o", tmp_path / noise_model, "--epochs", 10, "--batch-size", 64,
                "--zdim", 2, "--n-basis", 4, "--gt", tmp_path / "sim" / "ground_truth", "--device", "cpu", "-q",
                *config)
        scores[noise_model] = json.loads((tmp_path / noise_model / "eval.json").read_text())["mean_fsc"]
        told = "noise power differs" in (tmp_path / noise_model / "train.log").read_text()
        assert told == (noise_model == "white")  # the unweighted run tells the user
        spectrum = json.loads((tmp_path / noise_model / "noise_spectrum.json").read_text())
        assert spectrum["optics_groups"] == [1, 2] and spectrum["noise_model"] == noise_model
    assert scores["background"] > scores["white"] + 0.15, scores


def test_the_user_is_told_only_when_the_groups_noise_differs():
    from hetrec_dist.model.noise import unequal_groups_line

    disk = HalfDisk.build(16, 7)
    spectrum = NoiseSpectrum.for_disk(torch.tensor([1, 2]), disk.coords)
    assert unequal_groups_line(spectrum) is None
    spectrum.power[1] *= 1.9
    assert unequal_groups_line(spectrum) is None
    spectrum.power[1] *= 2
    assert "up to 3.8 x (group 2 against group 1)" in unequal_groups_line(spectrum)


def test_a_run_resumed_as_background_takes_the_background_estimate(sim_store, tmp_path):
    """Resuming a white run with noise_model background estimates the noise from the images' corners, as a
    new background run does, instead of keeping the white run's residual estimate."""
    import json

    from conftest import run_cli

    tiny = ["--batch-size", 64, "--zdim", 2, "--n-basis", 2, "--device", "cpu", "-q"]
    (tmp_path / "background.yaml").write_text("noise_model: background\n")
    run_cli("train", sim_store, "-o", tmp_path / "white", "--epochs", 1, *tiny)
    white = json.loads((tmp_path / "white" / "noise_spectrum.json").read_text())["power"]
    run_cli("train", sim_store, "-o", tmp_path / "white", "--epochs", 2, "--resume",
            "--config", tmp_path / "background.yaml", *tiny)
    run_cli("train", sim_store, "-o", tmp_path / "fresh", "--epochs", 1, "--config", tmp_path / "background.yaml",
            *tiny)
    resumed, fresh = (json.loads((tmp_path / run / "noise_spectrum.json").read_text())
                      for run in ("white", "fresh"))
    assert resumed["noise_model"] == "background" and resumed["power"] == fresh["power"] != white


def test_background_noise_needs_pixels_outside_the_mask(sim_store, tmp_path):
    from conftest import assert_one_line_error, run_cli

    (tmp_path / "background.yaml").write_text("noise_model: background\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "run", "--epochs", 1, "--config",
                     tmp_path / "background.yaml", "--mask-diameter", 400, "--device", "cpu", "-q", expect_ok=False)
    assert_one_line_error(result, "leaves no particle-free pixels", "--mask-diameter")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
