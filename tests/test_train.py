import os
import shutil

import mrcfile
import numpy as np
import pytest
import torch
import yaml

from conftest import assert_one_line_error, run_cli

from hetrec_dist.model.hetvae import HetVAE
from hetrec_dist.physics.maps import half_ball_to_map, map_to_half_ball
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.render import render_map
from hetrec_dist.train.checkpoint import load_checkpoint
from hetrec_dist.train.config import TrainConfig

TINY = ["--batch-size", 64, "--zdim", 2, "--n-basis", 3, "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def tiny_run(sim_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 3, *TINY)
    return run


def test_a_run_writes_config_logs_checkpoints_and_latents(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["epochs"] == 3 and config["zdim"] == 2 and os.path.isdir(config["store"])
    assert len(epoch_scalars(tiny_run, "epoch/loss")) == 3
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tiny_run / "tb"))
    assert sorted(os.listdir(tiny_run / "checkpoints")) == ["epoch_0003.pt", "last.pt"]
    z = np.load(tiny_run / "z.npy")
    assert z.shape == (300, 2) and np.isfinite(z).all()
    with mrcfile.open(tiny_run / "mask.mrc") as mrc:
        mask, voxel_size = mrc.data.copy(), float(mrc.voxel_size.x)
    pixel_size_A = load_checkpoint(tiny_run / "checkpoints" / "last.pt")["pixel_size_A"]
    assert mask.shape == (32, 32, 32) and voxel_size == pytest.approx(pixel_size_A)
    assert mask[16, 16, 16] == 1 and mask.min() >= 0 and mask.max() <= 1
    sphere = 4 / 3 * np.pi * 0.45 ** 3  # the default sphere's share of the box
    assert mask.mean() < 0.5 * sphere  # after the warm-up epoch the mask follows the particle


def test_tensorboard_holds_loss_terms_timings_and_examples(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/data", "train/kl", "perf/images_per_s", "perf/touched_fraction",
                "perf/peak_memory_MiB", "time/data_s", "time/forward_s", "time/backward_s", "time/optimizer_s",
                "epoch/loss", "mask/volume_fraction"):
        assert tag in tags, tag
    assert "examples/data_vs_model" in events.Tags()["images"]


def test_resume_ends_where_an_uninterrupted_run_ends(sim_store, tiny_run, tmp_path):
    run = tmp_path / "resumed"
    run_cli("train", sim_store, "-o", run, "--epochs", 2, *TINY)
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q")
    resumed, whole = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, tiny_run))
    assert resumed["epoch"] == whole["epoch"] == 3 and resumed["step"] == whole["step"]
    for name, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    np.testing.assert_allclose(np.load(run / "z.npy"), np.load(tiny_run / "z.npy"), rtol=1e-4, atol=1e-4)


def test_a_run_in_the_old_several_rank_format_still_resumes(sim_store, tiny_run, tmp_path):
    """hetrec 0.1 let DeepSpeed's engine write several-rank checkpoints: checkpoints/epoch_NNNN/
    mp_rank_00_model_states.pt (encoder and decoder as "module", their Adam as "optimizer", the rest as the
    client state "hetrec"), named by checkpoints/latest. Such a run, written here from a 2-epoch run, resumes
    to where an uninterrupted run ends and then writes last.pt."""
    run = tmp_path / "old"
    run_cli("train", sim_store, "-o", run, "--epochs", 2, *TINY)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    dense = {k: v for k, v in state["model"].items() if k.startswith(("encoder.", "decoder."))}
    client = {**state, "model": {k: v for k, v in state["model"].items() if k not in dense}}
    del client["dense_optimizer"]
    shutil.rmtree(run / "checkpoints")
    os.makedirs(run / "checkpoints" / "epoch_0002")
    torch.save({"module": dense, "optimizer": state["dense_optimizer"], "hetrec": client},
               run / "checkpoints" / "epoch_0002" / "mp_rank_00_model_states.pt")
    (run / "checkpoints" / "latest").write_text("epoch_0002")
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q")
    resumed, whole = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, tiny_run))
    assert resumed["epoch"] == 3 and resumed["step"] == whole["step"]
    for name, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_dataloader_workers_train_reproducibly(sim_store, tmp_path):
    """Workers deal chunks among themselves, so batches differ from an in-process run, but a run with the
    same number of workers is reproducible."""
    for name in ("a", "b"):
        run_cli("train", sim_store, "-o", tmp_path / name, "--epochs", 1, "--num-workers", 2, *TINY)
    np.testing.assert_allclose(np.load(tmp_path / "a" / "z.npy"), np.load(tmp_path / "b" / "z.npy"), atol=1e-5)
    assert np.load(tmp_path / "a" / "z.npy").shape == (300, 2)


def test_embed_recomputes_the_latents(tiny_run, tmp_path):
    run_cli("embed", tiny_run, "-o", tmp_path / "z.npy", "--device", "cpu")
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), np.load(tiny_run / "z.npy"), atol=1e-5)


def test_volume_writes_one_map_per_latent(tiny_run, tmp_path):
    np.savetxt(tmp_path / "z.txt", [[0.0, 0.0], [1.0, -1.0], [2.0, 0.5]])
    run_cli("volume", tiny_run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps", "--device", "cpu")
    names = sorted(os.listdir(tmp_path / "maps"))
    assert names == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    with mrcfile.open(tmp_path / "maps" / names[1]) as mrc:
        assert mrc.data.shape == (32, 32, 32) and abs(float(mrc.voxel_size.x) - 4.0) < 1e-5
    np.savetxt(tmp_path / "bad.txt", [[0.0, 0.0, 0.0]])
    result = run_cli("volume", tiny_run, "--z", tmp_path / "bad.txt", "-o", tmp_path / "m2", expect_ok=False)
    assert_one_line_error(result, "bad.txt", "latent dimension is 2")


def test_a_map_in_the_basis_comes_back_in_the_same_frame():
    """The mean volume holding a map's coefficients decodes to that map: same orientation and handedness
    (the projection side is pinned by test_projector against real-space projections)."""
    box, apix = 32, 2.0
    model = hinge_model()
    truth = torch.from_numpy(render_map(model.start, model.weights, model.sigma_A, box, apix)).float()
    vae = HetVAE(TrainConfig(zdim=2, n_basis=2).model_shape(box, apix), pixel_size_A=apix, init_scale=0.0)
    coefficients = map_to_half_ball(truth, vae.half_ball, apix)
    vae.set_components(torch.stack([coefficients, torch.zeros_like(coefficients), torch.zeros_like(coefficients)], 1))
    decoded = vae.volume(torch.zeros(2))
    assert (decoded - truth).abs().max() < 0.02 * truth.abs().max()


def test_sparse_adam_changes_only_touched_rows_and_their_moments(sim_store):
    from hetrec_dist.data.reader import ChunkShuffledParticles

    model = HetVAE(TrainConfig(zdim=2, n_basis=3).model_shape(32, 4), pixel_size_A=4.0)
    optimizer = torch.optim.SparseAdam([model.basis], lr=1e-2)
    batch = next(iter(ChunkShuffledParticles(sim_store, batch_size=2)))
    for step in range(2):
        before = model.basis.detach().clone()
        optimizer.zero_grad()
        model(batch)["loss"].backward()
        touched = model.basis.grad.coalesce().indices()[0]
        optimizer.step()
        changed = (model.basis.detach() != before).any(1).nonzero().squeeze(1)
        assert set(changed.tolist()) <= set(touched.tolist()) and len(changed) > 0.9 * len(touched)
        state = optimizer.state[model.basis]
        untouched = torch.ones(model.basis.shape[0], dtype=torch.bool)
        untouched[touched] = False
        if step == 0:
            assert (state["exp_avg"][untouched] == 0).all() and (state["exp_avg_sq"][untouched] == 0).all()
    assert touched.numel() < 0.5 * model.basis.shape[0]


def epoch_scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [event.value for event in EventAccumulator(str(run / "tb")).Reload().Scalars(tag)]


def test_training_on_more_epochs_lowers_the_loss(tiny_run):
    losses = epoch_scalars(tiny_run, "epoch/loss")
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_a_runs_config_is_a_preset_for_another_run(sim_store, tiny_run, tmp_path):
    run_cli("train", sim_store, "-o", tmp_path / "again", "--config", tiny_run / "config.yaml", "--epochs", 1, "-q")
    again = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert again["zdim"] == 2 and again["n_basis"] == 3 and again["epochs"] == 1


def test_the_basis_gradient_from_slice_factors_equals_autograds(sim_store):
    """Training builds the basis gradient from per-image factors (what ranks exchange); it must be autograd's."""
    from hetrec_dist.data.reader import ChunkShuffledParticles

    model = HetVAE(TrainConfig(zdim=2, n_basis=3).model_shape(32, 4), pixel_size_A=4.0)
    batch = next(iter(ChunkShuffledParticles(sim_store, batch_size=8)))
    noise = torch.randn(8, 2)
    model(batch, noise=noise)["loss"].backward()
    expected = model.basis.grad.coalesce()
    out = model(batch, noise=noise, basis_factors=True)
    model.encoder.zero_grad()
    out["loss"].backward()
    built = out["factors"].basis_gradient()
    torch.testing.assert_close(built.indices(), expected.indices())
    torch.testing.assert_close(built.values(), expected.values())


def test_train_bad_inputs(sim_dir, sim_store, tiny_run, tmp_path):
    assert_one_line_error(run_cli("train", sim_store, "-o", tiny_run, *TINY, expect_ok=False),
                          "already exists", "--resume", "--overwrite")
    (tmp_path / "bad.yaml").write_text("epochs: 2\nlearning_rate: 0.1\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "r1", "--config", tmp_path / "bad.yaml", expect_ok=False)
    assert_one_line_error(result, "bad.yaml", "learning_rate")
    (tmp_path / "typo.yaml").write_text("epochs: many\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "r1", "--config", tmp_path / "typo.yaml", expect_ok=False)
    assert_one_line_error(result, "epochs", "is not an integer")
    result = run_cli("train", sim_store, "-o", tiny_run, "--resume", "--zdim", 5, expect_ok=False)
    assert_one_line_error(result, "checkpoint's model has zdim 2", "settings ask for zdim 5")
    assert load_checkpoint(tiny_run / "checkpoints" / "last.pt")["epoch"] == 3  # untouched
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", tmp_path / "small.zarr", "--box", 12, "-q")
    result = run_cli("train", tmp_path / "small.zarr", "-o", tmp_path / "r2", expect_ok=False)
    assert_one_line_error(result, "box 12 is not supported")
    result = run_cli("train", tmp_path / "nostore", "-o", tmp_path / "r3", expect_ok=False)
    assert_one_line_error(result, "not a particle store")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
    result = run_cli("train", sim_store, "-o", tmp_path / "r4", "--basis-reduction", "scatter", expect_ok=False)
    assert_one_line_error(result, "basis_reduction", "'scatter'", "factors")
    (tmp_path / "mask.yaml").write_text("mask_diameter_A: -5\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "r5", "--config", tmp_path / "mask.yaml", expect_ok=False)
    assert_one_line_error(result, "mask_diameter_A", "-5")
    (tmp_path / "mask.yaml").write_text("mask: solvent\nmask_threshold: 0.3\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "r6", "--config", tmp_path / "mask.yaml", expect_ok=False)
    assert_one_line_error(result, "mask", "'solvent'", "envelope")
    (tmp_path / "mask.yaml").write_text("mask_threshold: 1.5\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "r7", "--config", tmp_path / "mask.yaml", expect_ok=False)
    assert_one_line_error(result, "mask_threshold", "1.5")
    assert not any((tmp_path / f"r{i}").exists() for i in (4, 5, 6, 7))


def test_confining_the_basis_keeps_a_particle_inside_the_mask_and_removes_what_is_outside():
    """The trained model's way to the mask: the true map of the simulated particle loaded as the mean volume
    and a corner blob as a second volume; a mask just larger than the particle keeps the first as it was."""
    box, apix = 48, 3.0
    atoms = hinge_model()
    truth = torch.from_numpy(render_map(atoms.start, atoms.weights, atoms.sigma_A, box, apix))
    corner = torch.zeros_like(truth)
    corner[2:6, 2:6, 2:6] = truth.max()
    vae = HetVAE(TrainConfig(zdim=1, n_basis=1).model_shape(box, apix), pixel_size_A=apix).double()
    coefficients = torch.stack([map_to_half_ball(v, vae.half_ball, apix) for v in (truth, corner)], dim=1)
    vae.set_components(coefficients)
    particle_diameter = 2 * (np.linalg.norm(atoms.start, axis=1).max() + 3 * atoms.sigma_A)
    vae.confine_basis(vae.support_projector(particle_diameter))
    assert (vae.volume(torch.zeros(1, dtype=torch.float64)) - truth).abs().max() < 0.02 * truth.max()
    corner_left = half_ball_to_map(vae.components()[:, 1], vae.half_ball, box, apix)
    assert corner_left.abs().max() < 0.02 * truth.max()


def test_the_envelope_mask_keeps_every_conformation_the_decoder_reaches_and_removes_the_rest():
    """The hinge at coordinate 0 as the mean volume, its change to coordinate 1 along the latent axis, and a
    blob that no latent reaches (decoder column 0) 11 px off the particle, inside the sphere: the envelope mask
    keeps both conformations' maps and removes the blob, which the sphere alone keeps."""
    box, apix = 48, 3.0
    atoms = hinge_model()
    start, end = (torch.from_numpy(render_map(positions, atoms.weights, atoms.sigma_A, box, apix))
                  for positions in atoms.positions([0, 1]))
    grid = torch.arange(box, dtype=torch.float64) - box // 2
    blob = start.max() * torch.exp(-((grid[:, None, None] - 19) ** 2 + grid[None, :, None] ** 2
                                     + grid[None, None, :] ** 2) / (2 * 1.2 ** 2))
    assert start[36:, :, :].abs().max() < 1e-3 * start.max() and end[36:, :, :].abs().max() < 1e-3 * start.max()
    vae = HetVAE(TrainConfig(zdim=1, n_basis=2).model_shape(box, apix), pixel_size_A=apix).double()
    vae.decoder.weight.data, vae.decoder.bias.data = torch.tensor([[1.0], [0.0]]).double(), torch.zeros(2).double()
    coefficients = torch.stack([map_to_half_ball(v, vae.half_ball, apix) for v in (start, end - start, blob)], dim=1)

    def confined(follow_envelope):
        vae.set_components(coefficients)
        vae.confine_basis(vae.support_projector(), follow_envelope)
        return [vae.volume(torch.tensor([z]).double()) for z in (0.0, 1.0)], half_ball_to_map(
            vae.components()[:, 2], vae.half_ball, box, apix)

    (at_start, at_end), blob_left = confined(follow_envelope=True)
    assert (at_start - start).abs().max() < 0.03 * start.max() and (at_end - end).abs().max() < 0.03 * start.max()
    assert blob_left.abs().max() < 0.01 * start.max()
    _, blob_in_sphere = confined(follow_envelope=False)
    assert blob_in_sphere.abs().max() > 0.9 * start.max()


def test_observed_spectra_undo_the_particle_shift():
    """The model compares slices with the image's spectrum translated by +shift: an image rendered with a
    shift gives the spectrum of the same particle rendered centred."""
    from hetrec_dist.simulate.render import project_atoms

    model = hinge_model()
    vae = HetVAE(TrainConfig(zdim=2, n_basis=1).model_shape(32, 4), pixel_size_A=4.0)
    rotation = np.eye(3)[None]
    shifted, centred = (torch.from_numpy(project_atoms(model.start[None], model.weights, model.sigma_A, rotation,
                                                       np.array([s]), 32, 4.0)).float()
                        for s in ([2.5, -1.5], [0.0, 0.0]))
    observed = vae.observed_spectra({"images": shifted, "shifts": torch.tensor([[2.5, -1.5]])})
    expected = vae.observed_spectra({"images": centred, "shifts": torch.zeros(1, 2)})
    assert (observed - expected).abs().max() < 0.02 * expected.abs().max()  # edge pixels wrap in the FFT
    wrong_sign = vae.observed_spectra({"images": shifted, "shifts": torch.tensor([[-2.5, 1.5]])})
    assert (wrong_sign - expected).abs().max() > 0.3 * expected.abs().max()


def test_the_model_predicts_the_simulators_clean_particles_from_the_true_map():
    """The whole forward model (pose, shift correction, CTF, slice, Friedel flip) against the simulator's
    independent real-space pipeline: with the true map as the mean volume, prediction and noise-free
    image agree shell by shell (correlation > 0.98) out to 0.8 Nyquist."""
    from hetrec_dist.physics.rotations import matrices_from_relion_euler
    from hetrec_dist.simulate.dataset import clean_images, draw_particles

    box, pixel_size = 32, 4.0
    atoms = hinge_model()
    particles, ctf = draw_particles(40, box, pixel_size, np.random.default_rng(1))
    particles["coordinate"] = 0.5
    images = clean_images(atoms, particles, ctf, box, pixel_size)
    truth = render_map(atoms.positions(np.array([0.5]))[0], atoms.weights, atoms.sigma_A, box, pixel_size)
    vae = HetVAE(TrainConfig(zdim=2, n_basis=1).model_shape(box, pixel_size), pixel_size).eval()
    with torch.no_grad():
        coefficients = map_to_half_ball(torch.from_numpy(truth).float(), vae.half_ball, pixel_size)
        vae.set_components(torch.stack([coefficients, torch.zeros_like(coefficients)], 1))
        batch = {"images": torch.from_numpy(images).float(), "ctf": torch.from_numpy(ctf).float(),
                 "rotations": torch.from_numpy(matrices_from_relion_euler(
                     particles["rot"], particles["tilt"], particles["psi"])).float(),
                 "shifts": torch.from_numpy(particles[["shift_x_px", "shift_y_px"]].to_numpy().copy()).float()}
        out = vae(batch)
    radius = vae.disk.coords.norm(dim=1)
    for inner in range(0, int(0.8 * box / 2), 2):
        shell = (radius >= inner) & (radius < inner + 2)
        observed, predicted = out["observed"][:, shell], out["predicted"][:, shell]
        correlation = (observed * predicted.conj()).real.sum() / torch.sqrt(
            (observed.abs() ** 2).sum() * (predicted.abs() ** 2).sum())
        assert correlation > 0.98, (inner, float(correlation))


def test_each_default_is_stated_once_by_the_config_and_agrees_everywhere_it_is_shown():
    """TrainConfig holds the defaults; configs/default.yaml and the train command's help show them."""
    import dataclasses
    import re

    from hetrec_dist.cli.train import command as train_command

    defaults = TrainConfig()
    preset = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "configs", "default.yaml")))
    assert preset == dataclasses.asdict(defaults)
    shown = 0
    for option in train_command.params:
        found = re.search(r"\(default ([^)]+)\)", option.help or "")
        expected = getattr(defaults, option.name, None)
        if found and expected is not None:  # None: the help explains what the run takes instead
            value = float(found.group(1)) if isinstance(expected, (int, float)) else found.group(1)
            assert value == expected, (option.name, found.group(1), expected)
            shown += 1
    assert shown >= 9


def test_the_same_particles_at_any_box_get_the_same_fourier_extent():
    """The resolutions the model works to are in Å: the half-disk it compares ends at 4 Å, the encoder's part
    of it at 6 Å, whether the particles come at 2, 1 or 0.5 Å a pixel; coarser pixels stop at Nyquist. (With
    the radii as fractions of the box, as before, a box-128 run compared noise out to 2 Å, and its latents
    spread the motion over five directions: docs/benchmarks.md.)"""
    config = TrainConfig()
    for box, pixel_size in ((64, 2.0), (128, 1.0), (256, 0.5)):
        model = HetVAE(config.model_shape(box, pixel_size), pixel_size_A=pixel_size)
        frequency = model.disk.coords.norm(dim=1) / (box * pixel_size)  # 1/Å
        encoder = frequency[model.encoder_points]
        assert 1 / frequency.max() == pytest.approx(4.0, rel=0.05), box
        assert 1 / encoder.max() == pytest.approx(6.0, rel=0.05), box
    coarse = HetVAE(config.model_shape(32, 4.0), pixel_size_A=4.0)
    assert coarse.disk.radius == 15  # Nyquist (less one voxel for the interpolation margin)


def test_resolutions_that_leave_no_model_and_changes_a_resumed_run_cannot_make_are_refused(sim_store, tiny_run,
                                                                                         tmp_path):
    for setting, fragment in (("max_resolution_A: 1000", "leaves the model under 8 Fourier shells"),
                              ("encoder_resolution_A: 1000", "leaves the model under 4 Fourier shells"),
                              ("max_resolution_A: true", "True is not a number")):
        (tmp_path / "c.yaml").write_text(setting + "\n")
        result = run_cli("train", sim_store, "-o", tmp_path / "run", "--config", tmp_path / "c.yaml", *TINY,
                         expect_ok=False)
        assert_one_line_error(result, fragment)
    (tmp_path / "c.yaml").write_text("max_resolution_A: 8.0\n")
    saved = (tiny_run / "config.yaml").read_text()
    result = run_cli("train", sim_store, "-o", tiny_run, "--resume", "--epochs", 4, "--config", tmp_path / "c.yaml",
                     *TINY, expect_ok=False)
    assert_one_line_error(result, "a resumed run keeps its model", "max_resolution_A 4.0, not 8.0")
    assert (tiny_run / "config.yaml").read_text() == saved


def test_a_loss_that_is_not_finite_stops_the_run_before_its_checkpoint(sim_store, tmp_path, monkeypatch):
    from hetrec_dist.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "train_epoch", lambda self: {"loss": float("nan"), "data": 0.0, "kl": 0.0,
                                                              "images_per_s": 1.0})
    result = run_cli("train", sim_store, "-o", tmp_path / "run", "--epochs", 2, *TINY, expect_ok=False)
    assert_one_line_error(result, "the loss became nan in epoch 0", "nothing of this epoch was saved")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
