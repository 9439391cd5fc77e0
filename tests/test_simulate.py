import json
import os

import mrcfile
import numpy as np
import starfile
from scipy.ndimage import map_coordinates

from conftest import assert_one_line_error, run_cli

from hetrec_dist.data.reader import ParticleStore
from hetrec_dist.physics.rotations import matrices_from_relion_euler
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.render import apply_ctf, project_atoms, render_map


def project_map(volume, rotation, shift_px, pixel_size_A):
    """Independent real-space projection of a map [z, y, x]: image(u, v) = sum_w V(R^T (u, v, w)) dw,
    translated by -shift; sampled with cubic interpolation."""
    box = volume.shape[0]
    grid = np.arange(box) - box // 2
    w, v, u = np.meshgrid(grid, grid, grid, indexing="ij")
    image_points = np.stack([u + shift_px[0], v + shift_px[1], w], axis=-1).reshape(-1, 3)
    map_points = image_points @ rotation  # rows: R^T q
    indices = map_points[:, ::-1].T + box // 2  # (z, y, x) indices
    samples = map_coordinates(volume, indices, order=3, mode="constant").reshape(box, box, box)
    return samples.sum(axis=0) * pixel_size_A


def test_atom_projection_matches_projection_of_the_rendered_map():
    model = hinge_model()
    positions = model.positions([0.7])
    box, apix = 48, 3.0
    volume = render_map(positions[0], model.weights, model.sigma_A, box, apix)
    rotation = matrices_from_relion_euler([40.0], [70.0], [-110.0])
    shift = np.array([[1.5, -2.0]])
    image = project_atoms(positions, model.weights, model.sigma_A, rotation, shift, box, apix)[0]
    expected = project_map(volume, rotation[0], shift[0], apix)
    assert np.abs(image - expected).max() < 0.01 * np.abs(expected).max()
    # a mirrored object does not project the same way: the test can tell handedness
    mirrored = project_map(volume[::-1].copy(), rotation[0], shift[0], apix)
    assert np.abs(image - mirrored).max() > 0.2 * np.abs(expected).max()


def test_the_hinge_moves_along_the_coordinate():
    model = hinge_model()
    start, end = model.positions([0.0, 1.0])
    moved = np.linalg.norm(end - start, axis=1)
    assert moved[model.hinge_atoms].mean() > 15.0 and moved[~model.hinge_atoms].max() == 0.0


def test_simulated_star_reconstructs_to_the_ground_truth_frame(tmp_path):
    """STAR -> store -> images agree with projections of the ground-truth map at the stored poses: the
    pose and shift conventions of the simulator, the STAR file and the store agree, handedness included."""
    out = tmp_path / "sim"
    run_cli("simulate", "-o", out, "--n", 6, "--box", 32, "--snr", 1e8, "--seed", 5, "--n-maps", 2, "-q")
    run_cli("convert", out / "particles.star", "-o", tmp_path / "p.zarr", "-q")
    store = ParticleStore(str(tmp_path / "p.zarr"))
    batch = store.read(0, 6)
    coordinates = np.load(out / "ground_truth" / "coordinates.npy")
    model = hinge_model()
    for i in range(6):
        volume = render_map(model.positions([coordinates[i]])[0], model.weights, model.sigma_A, 32, 4.0)
        clean = project_map(volume, batch["rotations"][i].astype(np.float64), batch["shifts"][i], 4.0)
        expected = apply_ctf(clean[None], batch["ctf"][i:i + 1].astype(np.float64), 4.0)[0]
        correlation = np.corrcoef(expected.ravel(), batch["images"][i].ravel())[0, 1]
        assert correlation > 0.99, (i, correlation)


def test_simulate_writes_ground_truth_and_a_relion_31_star(sim_dir):
    star = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)
    assert set(star) == {"optics", "particles"} and len(star["particles"]) == 300
    truth = json.load(open(os.path.join(sim_dir, "ground_truth", "ground_truth.json")))
    assert [m["coordinate"] for m in truth["maps"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    with mrcfile.open(os.path.join(sim_dir, "ground_truth", truth["maps"][0]["file"])) as mrc:
        assert mrc.data.shape == (32, 32, 32) and abs(float(mrc.voxel_size.x) - 4.0) < 1e-6
    coordinates = np.load(os.path.join(sim_dir, "ground_truth", "coordinates.npy"))
    assert coordinates.shape == (300,) and 0 <= coordinates.min() and coordinates.max() <= 1


def test_simulate_noise_level_follows_the_snr(tmp_path):
    run_cli("simulate", "-o", tmp_path / "a", "--n", 200, "--box", 32, "--snr", 0.1, "-q")
    run_cli("simulate", "-o", tmp_path / "b", "--n", 200, "--box", 32, "--snr", 1e8, "-q")
    noisy = mrcfile.read(tmp_path / "a" / "stacks" / "particles_0000.mrcs")
    clean = mrcfile.read(tmp_path / "b" / "stacks" / "particles_0000.mrcs")
    snr = clean.var() / (noisy - clean).var()
    assert 0.09 < snr < 0.11


def test_simulate_refuses_to_overwrite(tmp_path):
    run_cli("simulate", "-o", tmp_path / "s", "--n", 5, "--box", 16, "-q")
    assert_one_line_error(run_cli("simulate", "-o", tmp_path / "s", "--n", 5, expect_ok=False), "already exists")
    (tmp_path / "other").mkdir()
    result = run_cli("simulate", "-o", tmp_path / "other", "--n", 5, "--overwrite", expect_ok=False)
    assert_one_line_error(result, "not a simulated dataset")


def test_simulate_from_a_pdb_file_with_two_conformations(tmp_path):
    lines = []
    for i, (x, y, z) in enumerate([(0, 0, 0), (5, 0, 0), (0, 6, 0), (0, 0, 7)]):
        lines.append(f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C")
    (tmp_path / "a.pdb").write_text("\n".join(lines) + "\nEND\n")
    (tmp_path / "b.pdb").write_text("\n".join(lines[:3]) + "\nEND\n")
    run_cli("simulate", "-o", tmp_path / "s", "--n", 4, "--box", 16, "--atoms", tmp_path / "a.pdb", "-q")
    result = run_cli("simulate", "-o", tmp_path / "t", "--n", 4, "--box", 16, "--atoms", tmp_path / "a.pdb",
                     "--atoms-end", tmp_path / "b.pdb", expect_ok=False)
    assert_one_line_error(result, "b.pdb", "same atoms")
    assert not (tmp_path / "t").exists()


def test_poses_can_be_written_with_consensus_like_errors_and_the_truth_is_kept(tmp_path):
    run_cli("simulate", "-o", tmp_path / "s", "--n", 2000, "--box", 16, "--pose-error-deg", 3,
            "--shift-error-px", 0.5, "-q")
    truth = np.load(tmp_path / "s" / "ground_truth" / "poses.npz")
    particles = starfile.read(tmp_path / "s" / "particles.star")["particles"]
    written = matrices_from_relion_euler(particles["rlnAngleRot"], particles["rlnAngleTilt"],
                                         particles["rlnAnglePsi"])
    cosine = (np.einsum("nij,nij->n", written, truth["rotations"]) - 1) / 2
    error_deg = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
    assert abs(error_deg.mean() - 3 * np.sqrt(2 / np.pi)) < 0.15  # |N(0, 3)| has mean 2.39
    shift_error = particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 8.0 - truth["shifts"]
    assert abs(shift_error.std() - 0.5) < 0.03


def test_junk_particles_show_another_object_and_are_marked(tmp_path):
    run_cli("simulate", "-o", tmp_path / "s", "--n", 400, "--box", 32, "--snr", 1e8, "--junk-fraction", 0.25, "-q")
    junk = np.load(tmp_path / "s" / "ground_truth" / "junk.npy")
    coordinates = np.load(tmp_path / "s" / "ground_truth" / "coordinates.npy")
    assert 0.2 < junk.mean() < 0.3 and np.isnan(coordinates[junk]).all() and np.isfinite(coordinates[~junk]).all()
    run_cli("convert", tmp_path / "s" / "particles.star", "-o", tmp_path / "p.zarr", "-q")
    batch = ParticleStore(str(tmp_path / "p.zarr")).read(0, 400)
    model = hinge_model()
    shown = np.nan_to_num(coordinates)
    expected = apply_ctf(project_atoms(model.positions(shown), model.weights, model.sigma_A, batch["rotations"],
                                       batch["shifts"], 32, 4.0), batch["ctf"], 4.0)
    error = np.abs(batch["images"] - expected).max(axis=(1, 2)) / np.abs(expected).max(axis=(1, 2))
    assert error[~junk].max() < 1e-3 and error[junk].min() > 0.2


def test_falling_noise_loses_power_with_frequency_and_white_noise_does_not(tmp_path):
    powers = {}
    for spectrum in ("white", "falling"):
        run_cli("simulate", "-o", tmp_path / spectrum, "--n", 200, "--box", 64, "--apix", 1.0, "--snr", 1e-6,
                "--noise-spectrum", spectrum, "--defocus-min-A", 15000, "--defocus-max-A", 16000, "-q")
        images = mrcfile.read(tmp_path / spectrum / "stacks" / "particles_0000.mrcs").astype(np.float64)
        power = np.abs(np.fft.fft2(images)) ** 2
        radius = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64)))  # cycles a pixel = 1/Å here
        powers[spectrum] = [power[:, (radius > low) & (radius < high)].mean() for low, high in ((0.02, 0.05),
                                                                                              (0.3, 0.45))]
        star = starfile.read(tmp_path / spectrum / "particles.star")["particles"]
        assert star["rlnDefocusU"].between(15000, 16000).all()
    assert 0.8 < powers["white"][0] / powers["white"][1] < 1.25
    assert 6 < powers["falling"][0] / powers["falling"][1] < 11


def test_several_snrs_make_optics_groups_of_that_noise(tmp_path):
    """--snr 1 --snr 0.01: two optics groups of half the particles each, each group's images those the same
    seed gives with its SNR alone."""
    out = {}
    for name, snrs in (("both", ["--snr", 1, "--snr", 0.01]), ("clean", ["--snr", 1]), ("noisy", ["--snr", 0.01])):
        run_cli("simulate", "-o", tmp_path / name, "--n", 40, "--box", 32, "--seed", 2, *snrs, "-q")
        star = starfile.read(tmp_path / name / "particles.star", always_dict=True)
        out[name] = (star, mrcfile.read(tmp_path / name / "stacks" / "particles_0000.mrcs"))
    star, images = out["both"]
    assert list(star["optics"]["rlnOpticsGroup"]) == [1, 2]
    assert list(star["particles"]["rlnOpticsGroup"]) == [1] * 20 + [2] * 20
    np.testing.assert_allclose(images[:20], out["clean"][1][:20], atol=1e-6)
    np.testing.assert_allclose(images[20:], out["noisy"][1][20:], atol=1e-5)
    ratio = np.std(out["noisy"][1]) / np.std(out["clean"][1])
    assert abs(ratio - np.sqrt((1 + 100) / (1 + 1))) < 0.7, ratio  # image power: signal (1 part) + noise
    truth = json.loads((tmp_path / "both" / "ground_truth" / "ground_truth.json").read_text())
    assert truth["settings"]["snr"] == [1.0, 0.01]
