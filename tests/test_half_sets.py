"""Half-set training (`hetrec train --half-sets`): a basis per half of the particles, half-maps and their FSC."""

import json
import os
import shutil
import warnings

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from conftest import assert_one_line_error, run_cli

from hetrec_dist.analysis.half_maps import (
    agreement_line,
    describe_resolution,
    half_set_agreement,
    latent_resolution,
)
from hetrec_dist.cli.run_files import run_model
from hetrec_dist.model.hetvae import HetVAE
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.projector import project, slice_geometry
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.dataset import simulate_dataset
from hetrec_dist.train.config import build_config
from hetrec_dist.train.trainer import Trainer

TINY = ["--batch-size", 64, "--zdim", 3, "--n-basis", 3, "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def half_set_run(sim_store, sim_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("half_sets") / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 3, "--half-sets", *TINY)
    run_cli("analyze", run, "--k", 4, "--no-umap", "--device", "cpu")
    return run


def test_an_images_slice_and_gradient_are_those_of_its_own_half_sets_basis_alone():
    """Against two separate bases: the stacked basis gives each image the slice of its own half's basis,
    and each half's rows get the gradient of that half's images only."""
    box, n_components = 16, 3
    half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
    generator = torch.Generator().manual_seed(0)
    rotations = torch.from_numpy(matrices_from_relion_euler(*random_relion_euler(6, np.random.default_rng(0))))
    halves = torch.tensor([1, 2, 1, 2, 2, 1])
    weights = torch.randn(6, n_components, generator=generator, dtype=torch.float64)
    grads = torch.randn(6, disk.coords.shape[0], 2, generator=generator, dtype=torch.float64)
    bases = [torch.randn(half_ball.n_voxels, 2 * n_components, generator=generator, dtype=torch.float64,
                         requires_grad=True) for _ in (1, 2)]
    stacked = torch.cat([b.detach() for b in bases]).requires_grad_()
    geometry = slice_geometry(rotations, disk.coords, half_ball, (halves - 1) * half_ball.n_voxels, n_stacked=2)
    slices = project(stacked, weights, geometry)
    (slices * grads).sum().backward()
    for half_set, basis in zip((1, 2), bases):
        own = halves == half_set
        alone = project(basis, weights[own], slice_geometry(rotations[own], disk.coords, half_ball))
        torch.testing.assert_close(slices[own], alone)
        (alone * grads[own]).sum().backward()
        rows = slice((half_set - 1) * half_ball.n_voxels, half_set * half_ball.n_voxels)
        torch.testing.assert_close(stacked.grad.to_dense()[rows], basis.grad.to_dense())


def test_each_particle_trains_only_its_own_half_sets_basis_once_an_epoch(sim_store, tmp_path):
    config = build_config(None, {"batch_size": 64, "zdim": 2, "n_basis": 3, "device": "cpu", "half_sets": True})
    trainer = Trainer(sim_store, tmp_path / "run", config, show_progress=False)
    n_voxels, seen = trainer.model.half_ball.n_voxels, []
    train_step = trainer.train_step

    def recording_step(batch, noise, share):
        out, timings, reduction = train_step(batch, noise, share)
        row_half_sets = out["factors"].geometry.rows // n_voxels + 1  # images x points x 8 corners
        for index, half_set, rows in zip(batch["index"], batch["half_set"], row_half_sets):
            assert (rows == half_set).all(), f"particle {index} of half-set {half_set} read the other's rows"
            seen.append((int(index), int(half_set)))
        return out, timings, reduction

    trainer.train_step = recording_step
    for _ in range(2):
        trainer.train_epoch()
    recorded = np.load(tmp_path / "run" / "half_sets.npy")
    assert np.bincount(recorded).tolist() == [0, 150, 150]
    indices, half_sets = np.array(seen).T
    assert np.bincount(indices, minlength=300).tolist() == [2] * 300  # every particle, once an epoch
    np.testing.assert_array_equal(half_sets, recorded[indices])


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    """A half-set run on images with no particle in them (SNR 1e-8)."""
    root = tmp_path_factory.mktemp("noise")
    simulate_dataset(str(root / "sim"), hinge_model(), n=400, box=32, snr=1e-8, seed=5, show_progress=False)
    run_cli("convert", root / "sim" / "particles.star", "-o", root / "noise.zarr", "-q")
    run_cli("train", root / "noise.zarr", "-o", root / "run", "--epochs", 3, "--half-sets", *TINY)
    return root / "run"


def test_half_maps_of_pure_noise_do_not_correlate_but_where_joined_and_identical_halves_do(noise_run):
    """Past the resolutions the halves share (half_sets_join_A), pure noise gives half-maps that do not correlate,
    though both halves started from the same random basis; the joined shells are one, and a resolution there
    is said not to be gold-standard."""
    model = run_model(noise_run, None, "cpu")
    radius = int(model.shape.max_radius * model.shape.box)
    joined = model.shape.box * model.pixel_size_A / model.half_sets_join_A  # 3.2 voxels
    for latent in np.random.default_rng(0).normal(size=(3, 3)):
        result = latent_resolution(model, latent)
        curve = np.array(result["curve"])
        np.testing.assert_allclose(curve[:int(joined + 0.5)], 1, atol=1e-6)  # shells 0-2: every voxel joined
        past = np.abs(curve[int(np.ceil(joined + 0.5)):radius])
        assert past.mean() < 0.1 and past.max() < 0.35, curve
        assert result["at_join"] and "not gold-standard" in describe_resolution(result)
    with torch.no_grad():
        model.set_components(model.components(1), half_set=2)
    same = latent_resolution(model, np.zeros(3))
    np.testing.assert_allclose(same["curve"][1:radius], 1, atol=1e-6)
    assert same["at_limit"]


def test_volume_writes_half_maps_whose_mean_is_the_map_and_fsc_gives_a_resolution_per_latent(half_set_run, tmp_path):
    np.savetxt(tmp_path / "z.txt", [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
    run_cli("volume", half_set_run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps", "--half-maps")
    names = [f"vol_00{i}{suffix}.mrc" for i in (0, 1) for suffix in ("", "_half1", "_half2")]
    assert sorted(os.listdir(tmp_path / "maps")) == names
    full, one, two = (mrcfile.read(tmp_path / "maps" / f"vol_001{s}.mrc") for s in ("", "_half1", "_half2"))
    np.testing.assert_allclose(full, (one + two) / 2, atol=1e-5 * np.abs(full).max())
    assert np.abs(one - two).max() > 0.05 * np.abs(full).max()  # two bases, not one
    result = run_cli("fsc", half_set_run, "--z", tmp_path / "z.txt", "--json")
    fsc = json.loads(result.output)
    model = run_model(half_set_run, None, "cpu")
    expected = latent_resolution(model, np.array([1.0, -1.0, 0.5], dtype=np.float32))
    assert len(fsc) == 2 and fsc[1]["resolution_0.143_A"] == pytest.approx(expected["resolution_0.143_A"])
    lines = run_cli("fsc", half_set_run, "--z", tmp_path / "z.txt", "--plot", tmp_path / "fsc.png").output
    assert lines.count("half-map FSC=0.143 at") == 2 and (tmp_path / "fsc.png").stat().st_size > 1000


def test_half_map_commands_refuse_a_run_without_half_sets_and_bad_arguments(half_set_run, sim_store, tmp_path):
    plain = tmp_path / "plain"
    run_cli("train", sim_store, "-o", plain, "--epochs", 1, *TINY)
    np.savetxt(tmp_path / "z.txt", [[0.0, 0.0, 0.0]])
    for args in (("fsc", plain, "--z", tmp_path / "z.txt"),
                 ("volume", plain, "--z", tmp_path / "z.txt", "-o", tmp_path / "m", "--half-maps")):
        assert_one_line_error(run_cli(*args, expect_ok=False), "without half-sets", "--half-sets")
    assert_one_line_error(run_cli("fsc", half_set_run, expect_ok=False), "is a run", "--z")
    assert_one_line_error(run_cli("train", sim_store, "-o", plain, "--resume", "--epochs", 2, "--half-sets",
                                  *TINY, expect_ok=False), "without half-sets", "resume it without --half-sets")
    assert_one_line_error(run_cli("train", sim_store, "-o", half_set_run, "--resume", "--epochs", 4,
                                  "--no-half-sets", *TINY, expect_ok=False), "with half-sets")


def test_the_analysis_page_gives_the_resolution_at_each_centre_and_along_pc1(half_set_run):
    out = half_set_run / "analyze.4"
    summary = json.loads((out / "summary.json").read_text())
    resolutions = summary["half_map_resolution_0.143_A"]
    assert len(resolutions["kmeans"]) == 4 and len(resolutions["pc1"]) == 10
    assert all(resolutions["limit_A"] <= r <= 32 * 4.0 for r in resolutions["kmeans"] + resolutions["pc1"])
    model = run_model(half_set_run, None, "cpu")
    centre = np.loadtxt(out / "kmeans_centres.txt")[2]
    assert resolutions["kmeans"][2] == pytest.approx(latent_resolution(model, centre)["resolution_0.143_A"])
    page = (out / "index.html").read_text()
    assert "plots/pc1_resolution.png" in page and (out / "plots" / "pc1_resolution.png").stat().st_size > 1000
    assert f"{resolutions['kmeans'][2]:.2f} Å" in page


def test_eval_compares_the_half_map_resolution_with_the_truth(half_set_run, sim_dir):
    run_cli("eval", half_set_run, "--gt", os.path.join(sim_dir, "ground_truth"), "--device", "cpu")
    scores = json.loads((half_set_run / "eval.json").read_text())
    for state in scores["maps"]:
        assert state["half_map_resolution_0.143_A"] >= 8.0 - 1e-6  # the model's limit: 4 Å pixels
        assert isinstance(state["half_map_at_limit"], bool)


def test_half_sets_come_from_the_input_and_go_back_to_it_with_select(sim_dir, half_set_run, tmp_path):
    blocks = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)
    given = np.where(np.arange(300) % 3 == 0, 1, 2)
    blocks["particles"]["rlnRandomSubset"] = given
    starfile.write(blocks, tmp_path / "subsets.star")
    run_cli("convert", tmp_path / "subsets.star", "-o", tmp_path / "s.zarr", "--datadir", sim_dir, "-q")
    result = run_cli("train", tmp_path / "s.zarr", "-o", tmp_path / "run", "--epochs", 1, "--half-sets",
                     *TINY[:-1])
    assert "half-sets: 100 and 200 particles, from the store" in result.output
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "half_sets.npy"), given)

    blocks["particles"]["rlnRandomSubset"] = np.where(np.arange(300) == 5, "half1", given.astype(str))
    starfile.write(blocks, tmp_path / "text.star")
    result = run_cli("convert", tmp_path / "text.star", "-o", tmp_path / "text.zarr", "--datadir", sim_dir)
    assert "rlnRandomSubset is half1 at row 6" in result.output
    blocks["particles"]["rlnRandomSubset"] = np.where(np.arange(300) == 7, 3, given)
    starfile.write(blocks, tmp_path / "odd.star")
    result = run_cli("convert", tmp_path / "odd.star", "-o", tmp_path / "odd.zarr", "--datadir", sim_dir)
    assert "Warning: " in result.output and "rlnRandomSubset is 3 at row 8" in result.output
    assert not np.any(np.asarray(open_group(tmp_path / "odd.zarr")["half_set"][:]))

    labels = np.load(half_set_run / "analyze.4" / "kmeans_labels.npy")
    run_cli("select", half_set_run, "--k", 4, "--clusters", "0,1", "-o", tmp_path / "subset.star")
    subset = starfile.read(tmp_path / "subset.star", always_dict=True)["particles"]
    chosen = np.flatnonzero(np.isin(labels, [0, 1]))
    run_half_sets = np.load(half_set_run / "half_sets.npy")
    np.testing.assert_array_equal(subset["rlnRandomSubset"].to_numpy(), run_half_sets[chosen])


def test_cryosparc_splits_are_half_sets(sim_dir, tmp_path):
    from numpy.lib import recfunctions

    from test_convert import write_cryosparc

    records = write_cryosparc(sim_dir, tmp_path / "plain.cs")
    split = (np.arange(300) % 2).astype(np.uint32)
    records = recfunctions.append_fields(records, "alignments3D/split", split, usemask=False)
    with open(tmp_path / "split.cs", "wb") as f:
        np.save(f, records)
    run_cli("convert", tmp_path / "split.cs", "-o", tmp_path / "cs.zarr", "--datadir", sim_dir, "-q")
    np.testing.assert_array_equal(open_group(tmp_path / "cs.zarr")["half_set"][:], split + 1)


def open_group(path):
    from hetrec_dist.data.store import open_store

    return open_store(str(path))


def test_the_checkpoint_holds_the_split_so_another_half_sets_file_is_refused_and_a_lost_one_comes_back(
        half_set_run, sim_store, sim_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(half_set_run, run)
    trained = np.load(run / "half_sets.npy")
    np.save(run / "half_sets.npy", 3 - trained)  # a valid split, but not this run's
    result = run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 4, *TINY, expect_ok=False)
    assert_one_line_error(result, "half_sets.npy is not the split this run trained on")
    (run / "half_sets.npy").unlink()
    labels = np.load(run / "analyze.4" / "kmeans_labels.npy")
    run_cli("select", run, "--k", 4, "--clusters", "2", "-o", tmp_path / "subset.star")  # from the checkpoint
    subset = starfile.read(tmp_path / "subset.star", always_dict=True)["particles"]
    np.testing.assert_array_equal(subset["rlnRandomSubset"].to_numpy(), trained[labels == 2])
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 4, *TINY)
    np.testing.assert_array_equal(np.load(run / "half_sets.npy"), trained)


def test_fsc_and_select_refuse_what_would_give_a_wrong_value_or_a_traceback(half_set_run, tmp_path):
    maps = tmp_path / "maps"
    np.savetxt(tmp_path / "z.txt", [[0.0, 0.0, 0.0]])
    run_cli("volume", half_set_run, "--z", tmp_path / "z.txt", "-o", maps, "--half-maps")
    half = mrcfile.read(maps / "vol_000_half1.mrc")
    for name, values in (("nan.mrc", np.where(np.arange(half.size).reshape(half.shape) == 7, np.nan, half)),
                         ("zero.mrc", np.zeros_like(half))):
        with warnings.catch_warnings():  # mrcfile warns of the NaN we mean
            warnings.simplefilter("ignore", RuntimeWarning)
            mrcfile.write(tmp_path / name, values.astype(np.float32), voxel_size=4.0)
    pair = (maps / "vol_000_half1.mrc", maps / "vol_000_half2.mrc")
    for args, fragment in (((maps / "vol_000_half1.mrc", tmp_path / "nan.mrc"), "not numbers"),
                           ((*pair, "--mask", tmp_path / "nan.mrc"), "not numbers"),
                           ((maps / "vol_000_half1.mrc", tmp_path / "zero.mrc"), "an empty map"),
                           ((*pair, "--plot", tmp_path / "no" / "fsc.png"), "its folder does not exist"),
                           ((half_set_run, "--z", tmp_path / "z.txt", "--plot", tmp_path / "fsc.txt"), ".png")):
        assert_one_line_error(run_cli("fsc", *args, expect_ok=False), fragment)
    for args, fragment in ((("--clusters", "", "-o", tmp_path / "s.star"), "at least one cluster"),
                           (("--clusters", "1", "-o", tmp_path / "no" / "s.star"), "its folder does not exist")):
        assert_one_line_error(run_cli("select", half_set_run, "--k", 4, *args, expect_ok=False), fragment)


def test_explore_shows_the_half_maps_fsc_and_writes_the_half_sets(half_set_run, tmp_path):
    import starfile

    from hetrec_dist.analysis.half_maps import latent_resolution
    from hetrec_dist.cli.explore import load_explorer
    from hetrec_dist.explore.app import _resolution

    # its analysis made no UMAP (--no-umap): explore computes one (latents of 3 dimensions)
    explorer = load_explorer(str(half_set_run), out_dir=str(tmp_path), device="cpu")
    assert explorer.views["UMAP"].shape == (explorer.n_particles, 2)
    assert np.isfinite(explorer.views["UMAP"]).all()
    figure, line = _resolution(explorer, 5)
    expected = latent_resolution(explorer.model, explorer.z[5])
    np.testing.assert_allclose(figure.data[0].y, expected["curve"][1:])
    assert f"{expected['resolution_0.143_A']:.2f} Å" in line
    half_sets = explorer.colourings["half-set"].values
    assert set(np.unique(half_sets)) == {1, 2}
    paths, _ = explorer.save_selection("first", np.arange(40))
    written = starfile.read(paths[2], always_dict=True)["particles"]["rlnRandomSubset"]
    np.testing.assert_array_equal(written, half_sets[:40])


def _half_set_model(join_A=40.0):
    config = build_config(None, {"zdim": 2, "n_basis": 2, "half_sets": True})
    return HetVAE(config.model_shape(32, 4.0), 4.0, half_sets_join_A=join_A)


def test_both_halves_start_alike_and_joining_sets_their_coarse_coefficients_to_the_mean_alone():
    """Against voxel radii computed here: the coefficients within box x pixel size / half_sets_join_A of the
    origin become the halves' mean, in both halves; every other coefficient is left as it was."""
    model = _half_set_model()
    n_voxels = model.half_ball.n_voxels
    torch.testing.assert_close(model.basis[:n_voxels], model.basis[n_voxels:])
    with torch.no_grad():
        model.basis.normal_(generator=torch.Generator().manual_seed(0))
    before = model.basis.detach().numpy().copy()
    model.join_half_sets()
    after = model.basis.detach().numpy()
    joined = np.sqrt((model.half_ball.coords.numpy() ** 2).sum(1)) <= 32 * 4.0 / 40.0
    assert 50 < joined.sum() < 0.1 * n_voxels
    mean = (before[:n_voxels][joined] + before[n_voxels:][joined]) / 2
    np.testing.assert_allclose(after[:n_voxels][joined], mean, rtol=1e-6)
    np.testing.assert_allclose(after[n_voxels:][joined], mean, rtol=1e-6)
    np.testing.assert_array_equal(after[:n_voxels][~joined], before[:n_voxels][~joined])
    np.testing.assert_array_equal(after[n_voxels:][~joined], before[n_voxels:][~joined])


def test_half_set_agreement_tells_halves_that_move_alike_from_opposite_and_unrelated_ones():
    """The halves' changes along the latents' first principal direction: the same basis in both halves gives
    1, components of opposite sign -1 (the failure joining prevents), unrelated random bases about 0."""
    model, generator = _half_set_model(), torch.Generator().manual_seed(1)
    z = np.random.default_rng(0).normal(size=(500, 2)) * [3.0, 0.5]
    n_voxels = model.half_ball.n_voxels

    def random_components():
        return torch.complex(*torch.randn(2, n_voxels, 3, generator=generator))

    components = random_components()
    model.set_components(components, 1)
    model.set_components(components, 2)
    assert half_set_agreement(model, z) == pytest.approx(1.0, abs=1e-5)
    model.set_components(components * torch.tensor([1, -1, -1]), 2)
    assert half_set_agreement(model, z) == pytest.approx(-1.0, abs=1e-5)
    model.set_components(random_components(), 2)
    assert abs(half_set_agreement(model, z)) < 0.1
    assert not agreement_line(-1.0)[0] and "disagree" in agreement_line(-1.0)[1] and agreement_line(0.6)[0]


def test_a_half_set_run_trains_its_joined_coefficients_as_one_and_reports_the_halves_agreement(half_set_run):
    model = run_model(half_set_run, None, "cpu")
    n_voxels, rows = model.half_ball.n_voxels, model.joined_rows
    basis = model.basis.detach()
    assert model.half_sets_join_A == 40.0 and len(rows) > 0
    torch.testing.assert_close(basis[rows], basis[rows + n_voxels])
    own = torch.ones(n_voxels, dtype=torch.bool)
    own[rows] = False
    assert (basis[:n_voxels][own] - basis[n_voxels:][own]).abs().amax(1).gt(0).all()  # the rest: each its own
    with open(half_set_run / "train.log") as f:
        assert "half-set agreement along the latent's first principal direction" in f.read()
