"""Focused heterogeneity (`hetrec train --focus-mask`): masks built here, checked, confining the basis."""

import mrcfile
import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli

from hetrec_dist.data.store import open_store
from hetrec_dist.model.hetvae import HetVAE
from hetrec_dist.physics.maps import half_ball_to_map
from hetrec_dist.train.config import build_config
from hetrec_dist.train.focus_mask import read_focus_mask, soft_edge

TINY = ["--batch-size", 64, "--zdim", 2, "--n-basis", 3, "--device", "cpu", "-q"]


def write_mask(path, values, pixel_size_A):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(values, dtype=np.float32))
        mrc.voxel_size = pixel_size_A
    return path


def ball(box, centre, radius_px):
    """A binary ball [z, y, x] of radius_px about centre (z, y, x; pixels from the box's centre box // 2)."""
    grid = np.indices((box,) * 3) - box // 2
    return (((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0) <= radius_px ** 2).astype(np.float32)


def test_confined_basis_volumes_vanish_outside_the_focus_and_the_mean_does_not():
    """Against the maps of each volume computed here: after confinement every basis volume but the mean is
    zero where the focus is, off-centre and asymmetric (so that a swapped axis would show), and the mean still
    holds density there."""
    box, pixel_size_A = 32, 4.0
    model = HetVAE(build_config(None, {"zdim": 2, "n_basis": 2}).model_shape(box, pixel_size_A), pixel_size_A,
                   init_scale=1.0)
    focus = soft_edge(ball(box, (6, -3, 0), 5), 0.05 * box)
    projector = model.support_projector()
    projector.set_focus(torch.from_numpy(focus))
    model.confine_basis(projector)

    def component_map(c):
        return half_ball_to_map(model.components()[:, c].detach(), model.half_ball, box, pixel_size_A).numpy()

    outside = (ball(box, (6, -3, 0), 9) == 0) & (ball(box, (0, 0, 0), 12) > 0)  # past the edge, in the sphere
    inside = ball(box, (6, -3, 0), 5) > 0
    mean, volumes = component_map(0), [component_map(c) for c in (1, 2)]
    for volume in volumes:  # what is left outside: the ringing of a map cut to the basis' Fourier radius
        assert np.abs(volume[outside]).mean() < 0.03 * np.abs(volume[inside]).mean()
        assert np.abs(volume[outside]).max() < 0.3 * np.abs(volume[inside]).mean()
    assert np.abs(mean[outside]).mean() > 0.3 * np.abs(mean[inside]).mean()


def test_a_binary_mask_gets_a_soft_edge_and_another_box_of_the_same_extent_is_resampled(tmp_path):
    binary = ball(32, (0, 0, 0), 8)
    mask = read_focus_mask(write_mask(tmp_path / "m.mrc", binary, 4.0), 32, 4.0).values
    assert mask.min() == 0 and mask.max() == 1
    np.testing.assert_array_equal(mask[binary > 0], 1)
    edge = mask[(binary == 0) & (mask > 0)]
    assert len(edge) > 0 and (edge < 1).all()  # falls off outside, within 5% of the box (1.6 px)
    assert (mask[ball(32, (0, 0, 0), 8 + 1.6 + 1e-6) == 0] == 0).all()
    with pytest.warns(UserWarning, match="resampled"):
        fine = read_focus_mask(write_mask(tmp_path / "fine.mrc", ball(64, (0, 0, 0), 16), 2.0), 32, 4.0).values
    assert fine.shape == (32,) * 3  # softened on its own grid (to 16 + 1.6 px at 2 Å), then resampled: 8.8 px
    np.testing.assert_allclose((fine > 0.5).mean(), ball(32, (0, 0, 0), 8.8).mean(), rtol=0.1)
    assert fine[16, 16, 16] == 1 and fine[16, 16, 16 + 10] == 0  # centred as the particles are


@pytest.mark.parametrize("values, pixel_size_A, fragment", [
    (ball(32, (0, 0, 0), 8), 3.0, "128 Å"),                     # another extent: named with both
    (ball(32, (0, 0, 0), 8) * 5, 4.0, "from 0 to 1"),           # a density map, not a mask
    (np.ones((32, 32, 32)), 4.0, "focuses on nothing"),         # everything
    (ball(32, (0, 0, 0), 8) * 0.3, 4.0, "keeps nothing"),        # nothing above 0.5
    (np.where(ball(32, (0, 0, 0), 8) > 0, np.nan, 0), 4.0, "not numbers"),
    (np.zeros((32, 32, 16)), 4.0, "not a cubic"),
    (ball(32, (13, 13, 13), 3), 4.0, "inside the sphere the model covers"),  # in a corner, where nothing is
])
def test_a_mask_that_cannot_be_a_focus_is_refused_in_one_line(sim_store, tmp_path, values, pixel_size_A, fragment):
    store = open_store(sim_store).attrs.asdict()
    assert (store["box"], store["pixel_size_A"]) == (32, 4.0)
    path = write_mask(tmp_path / "bad.mrc", values, pixel_size_A)
    result = run_cli("train", sim_store, "-o", tmp_path / "run", "--epochs", 1, "--focus-mask", path, "--half-sets",
                     *TINY, expect_ok=False)
    assert_one_line_error(result, fragment)
    # nothing written, so that the same command with a good mask needs no --overwrite
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "half_sets.npy").exists()


def test_a_focused_run_keeps_its_mask_and_resumes_only_with_it(sim_store, tmp_path):
    focus = write_mask(tmp_path / "focus.mrc", ball(32, (0, 0, 6), 6), 4.0)
    other = write_mask(tmp_path / "other.mrc", ball(32, (0, 0, -6), 6), 4.0)
    run = tmp_path / "run"
    result = run_cli("train", sim_store, "-o", run, "--epochs", 1, "--focus-mask", focus, *TINY[:-1])
    assert "focused on" in result.output
    kept = mrcfile.read(run / "focus_mask.mrc")
    np.testing.assert_array_equal(kept, read_focus_mask(focus, 32, 4.0).values)
    assert_one_line_error(run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 2, "--focus-mask", other,
                                  *TINY, expect_ok=False), "not the focus mask", "was trained with")
    write_mask(tmp_path / "focus.mrc", ball(32, (6, 0, 0), 6), 4.0)  # the path now holds another mask:
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 2, *TINY)  # the run's own copy stands in
    np.testing.assert_array_equal(mrcfile.read(run / "focus_mask.mrc"), kept)
    plain = tmp_path / "plain"
    run_cli("train", sim_store, "-o", plain, "--epochs", 1, *TINY)
    assert_one_line_error(run_cli("train", sim_store, "-o", plain, "--resume", "--epochs", 2, "--focus-mask", other,
                                  *TINY, expect_ok=False), "without a focus mask")
    run_cli("analyze", run, "--k", 3, "--no-umap", "--device", "cpu")
    page = (run / "analyze.3" / "index.html").read_text()
    assert "Focused run" in page and "focus_mask.mrc" in page
    from hetrec_dist.cli.explore import load_explorer

    header = load_explorer(str(run), out_dir=str(tmp_path / "explore"), device="cpu", with_umap=False).header
    assert any(line.startswith("Focused run") and "focus_mask.mrc" in line for line in header)
    plain_header = load_explorer(str(plain), out_dir=str(tmp_path / "explore2"), device="cpu", with_umap=False).header
    assert not any("Focused" in line for line in plain_header)


def test_every_checkpoint_is_confined_whatever_the_steps_and_overwrite_checks_the_mask_first(sim_store, tmp_path):
    """5 steps an epoch, 3 epochs: the last step is not one of the every-10-steps confinements, yet the saved
    basis volumes vanish outside the focus (the epoch's end confines them). A bad mask with --overwrite leaves
    the earlier run whole."""
    from hetrec_dist.cli.run_files import run_model

    focus = write_mask(tmp_path / "focus.mrc", ball(32, (0, 0, 6), 6), 4.0)
    run = tmp_path / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 3, "--focus-mask", focus, *TINY)
    model = run_model(run, None, "cpu")
    assert model.shape.n_basis == 3
    outside = (ball(32, (0, 0, 6), 6 + 1.6 + 2) == 0) & (ball(32, (0, 0, 0), 12) > 0)
    inside = ball(32, (0, 0, 6), 6) > 0
    for c in range(1, 4):
        volume = half_ball_to_map(model.components()[:, c].detach(), model.half_ball, 32, 4.0).numpy()
        assert np.abs(volume[outside]).mean() < 0.03 * np.abs(volume[inside]).mean()
    before = sorted(p.name for p in run.iterdir())
    density = write_mask(tmp_path / "density.mrc", ball(32, (0, 0, 0), 8) * 3, 4.0)
    assert_one_line_error(run_cli("train", sim_store, "-o", run, "--overwrite", "--epochs", 1, "--focus-mask",
                                  density, *TINY, expect_ok=False), "from 0 to 1")
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_config_files_focus_mask_must_be_a_path(sim_store, tmp_path):
    (tmp_path / "c.yaml").write_text("focus_mask: 5\n")
    assert_one_line_error(run_cli("train", sim_store, "-o", tmp_path / "run", "--config", tmp_path / "c.yaml",
                                  *TINY, expect_ok=False), "focus_mask", "not a string")
    (tmp_path / "c.yaml").write_text("focus_mask:\n")  # left empty: no mask
    run_cli("train", sim_store, "-o", tmp_path / "run", "--config", tmp_path / "c.yaml", "--epochs", 1, *TINY)
    assert not (tmp_path / "run" / "focus_mask.mrc").exists()
