"""hetrec reconstruct: the model-free reconstruction against maps rendered in real space, pure noise, two ranks
against one, and the particles it is given."""

import json
import os
import shutil
import sys

import mrcfile
import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, free_port, run_bounded, run_cli

from hetrec_dist.analysis.fsc import fsc_curve
from hetrec_dist.analysis.reconstruct import Insertion
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.render import apply_ctf, project_atoms, render_map


def _ctf(n, box, pixel_size_A, rng):
    ctf = np.zeros((n, 9))
    ctf[:, :2] = box, pixel_size_A
    ctf[:, 2] = rng.uniform(8000, 20000, n)
    ctf[:, 3] = ctf[:, 2] + 300
    ctf[:, 4:8] = 40.0, 300.0, 2.7, 0.1
    return ctf


def _insert_all(images, rotations, shifts, ctf, box, pixel_size_A):
    insertion = Insertion(box, pixel_size_A)
    half_sets = np.arange(len(images)) % 2 + 1
    for start in range(0, len(images), 200):
        part = slice(start, start + 200)
        insertion.insert(*(torch.as_tensor(a[part]) for a in (images.astype(np.float32), rotations, shifts, ctf,
                                                                half_sets)))
    return insertion.reconstruct()


def test_noise_free_projections_of_a_map_reconstruct_to_that_map():
    """Images rendered in real space from Gaussian atoms (simulate.render: no Fourier slice involved), with
    CTFs and shifts: the reconstruction equals the map rendered from the same atoms, values included."""
    rng = np.random.default_rng(0)
    box, pixel_size_A, n = 48, 2.0, 2400
    atoms = hinge_model()
    positions = atoms.positions([0.3])[0]
    truth = render_map(positions, atoms.weights, 1.5, box, pixel_size_A)
    rotations = matrices_from_relion_euler(*random_relion_euler(n, rng))
    shifts = rng.normal(size=(n, 2)) * 1.5
    images = project_atoms(np.repeat(positions[None], n, 0), atoms.weights, 1.5, rotations, shifts, box,
                           pixel_size_A)
    ctf = _ctf(n, box, pixel_size_A, rng)
    result = _insert_all(apply_ctf(images, ctf, pixel_size_A), rotations, shifts, ctf, box, pixel_size_A)

    against_truth = fsc_curve(result.map, truth)
    assert against_truth[:int(0.85 * box / 2)].min() >= 0.99, np.round(against_truth, 3)
    scale = float((result.map * truth).sum() / (truth ** 2).sum())
    assert 0.95 < scale < 1.05  # the images' units: a map of density per Å³, as rendered
    assert result.particles == (n // 2, n // 2)
    assert result.fsc["resolution_0.143_A"] == pytest.approx(2 * pixel_size_A * box / (box - 2), rel=0.1)
    mirrored = fsc_curve(result.map, truth[::-1])  # the hinge is chiral: a hand flip would not match
    assert mirrored[4:12].mean() < 0.7


def test_half_maps_of_pure_noise_do_not_correlate():
    rng = np.random.default_rng(1)
    box, pixel_size_A, n = 32, 3.0, 2000
    rotations = matrices_from_relion_euler(*random_relion_euler(n, rng))
    ctf = _ctf(n, box, pixel_size_A, rng)
    result = _insert_all(rng.normal(size=(n, box, box)), rotations, np.zeros((n, 2)), ctf, box, pixel_size_A)
    curve = np.array(result.fsc["curve"])
    assert np.abs(curve[3:]).mean() < 0.06, np.round(curve, 2)
    assert np.abs(curve[3:]).max() < 0.3
    assert np.abs(curve[6:]).max() < 0.143  # neighbouring shells correlate (the crop): a few low ones stray


def test_the_compiled_insertion_equals_the_slice_operators_adjoint(monkeypatch):
    """The C loop (CPU) against PyTorch's sparse products of physics.projector (GPUs): the same sums."""
    rng = np.random.default_rng(2)
    box, n = 24, 40
    arguments = (torch.as_tensor(rng.normal(size=(n, box, box)), dtype=torch.float32),
                 torch.as_tensor(matrices_from_relion_euler(*random_relion_euler(n, rng))),
                 torch.as_tensor(rng.normal(size=(n, 2))), torch.as_tensor(_ctf(n, box, 2.0, rng)),
                 torch.as_tensor(rng.integers(1, 3, n)))
    sums = []
    for compiled in ("1", "0"):
        monkeypatch.setenv("HETREC_COMPILED_KERNELS", compiled)
        insertion = Insertion(box, 2.0)
        insertion.insert(*arguments)
        sums.append(insertion.sums)
    assert sums[0].abs().sum() > 0
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-5, atol=1e-6 * float(sums[1].abs().max()))


def test_reconstruct_a_store_and_its_outputs(sim_store, sim_dir, tmp_path):
    out = tmp_path / "rec"
    result = run_cli("reconstruct", sim_store, "-o", out, "-q")
    assert "reconstructed 300 particles" in result.output and "150 + 150" in result.output
    summary = json.loads((out / "reconstruct.json").read_text())
    assert summary["particles_per_half_set"] == [150, 150]
    with mrcfile.open(out / "map.mrc") as mrc:
        assert mrc.data.shape == (32, 32, 32)
        assert float(mrc.voxel_size.x) == pytest.approx(4.0)  # simulate's default: 128 Å / box
        rebuilt = mrc.data.copy()
    with mrcfile.open(out / "half1.mrc") as one, mrcfile.open(out / "half2.mrc") as two:
        assert fsc_curve(one.data, two.data)[1:4].min() > 0.5  # signal in both halves, from different images
    truth = mrcfile.read(os.path.join(sim_dir, "ground_truth", "map_02.mrc"))
    assert fsc_curve(rebuilt, truth)[1:4].min() > 0.8  # the hinge's mean shape, at low resolution
    assert (out / "fsc.png").stat().st_size > 1000

    again = run_cli("reconstruct", sim_store, "-o", out, "-q", expect_ok=False)
    assert_one_line_error(again, "earlier reconstruction", "--overwrite")
    run_cli("reconstruct", sim_store, "-o", out, "-q", "--overwrite", "--seed", "5")
    assert json.loads((out / "reconstruct.json").read_text())["half_sets_from"] == "split at random (seed 5)"


def test_a_subset_by_index_file_and_by_clusters_of_a_run(sim_store, two_epoch_run, tmp_path):
    index = tmp_path / "some.txt"
    index.write_text("\n".join(str(i) for i in range(0, 300, 3)))
    result = run_cli("reconstruct", sim_store, "--ind", index, "-o", tmp_path / "ind", "-q")
    assert "reconstructed 100 particles" in result.output

    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    run_cli("analyze", run, "--k", 3, "--no-umap")
    labels = np.load(run / "analyze.3" / "kmeans_labels.npy")
    result = run_cli("reconstruct", run, "--clusters", "0,2", "--k", 3, "-o", tmp_path / "clusters", "-q")
    chosen = int(np.isin(labels, (0, 2)).sum())
    assert f"reconstructed {chosen} particles (clusters 0,2 of analyze.3" in result.output


@pytest.mark.parametrize("args, fragments", [
    (["--clusters", "1"], ("--clusters needs SOURCE to be a training run",)),
    (["--ind", "ONE"], ("a gold-standard reconstruction needs particles in both",)),
    (["--device", "mps"], ("hetrec runs on cpu or cuda",)),
    (["-o", "NO_FOLDER"], ("does not exist",)),
])
def test_bad_requests_are_one_line_errors_and_keep_an_earlier_output(sim_store, tmp_path, args, fragments):
    (tmp_path / "one.txt").write_text("7\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "map.mrc").write_text("an earlier reconstruction")
    args = [str(tmp_path / "one.txt") if a == "ONE" else str(tmp_path / "none" / "out") if a == "NO_FOLDER" else a
            for a in args]
    result = run_cli("reconstruct", sim_store, "-o", tmp_path / "out", "--overwrite", *args, expect_ok=False)
    assert_one_line_error(result, *fragments)
    assert (tmp_path / "out" / "map.mrc").read_text() == "an earlier reconstruction"
    assert not (tmp_path / "none").exists()


@pytest.mark.multirank
def test_two_ranks_reconstruct_what_one_does(sim_store, tmp_path):
    run_cli("reconstruct", sim_store, "-o", tmp_path / "one", "-q")
    launched = run_bounded([sys.executable, "-m", "hetrec_dist.cli", "launch", "--master-port", free_port(),
                            "--procs-per-node", 2, "--", "reconstruct", sim_store, "-o", tmp_path / "two", "-q"])
    assert launched.returncode == 0, launched.stdout + launched.stderr
    for name in ("half1.mrc", "half2.mrc", "map.mrc"):
        one, two = (mrcfile.read(tmp_path / where / name) for where in ("one", "two"))
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6 * np.abs(one).max())
    assert json.loads((tmp_path / "two" / "reconstruct.json").read_text())["particles"] == 300
