"""Per-particle CTF refinement (`hetrec train --refine-ctf`): the defocus derivatives against finite
differences, refinement against the simulator's true defoci, resume, and the refined defoci written back
(`hetrec export`, `hetrec select`). 1 rank against 2 ranks: tests/test_data_parallel.py."""

import dataclasses
import pickle

import numpy as np
import pytest
import starfile
import torch
from scipy.spatial.transform import Rotation
from test_pose_refinement import _float64_model

from conftest import assert_one_line_error, run_cli

from hetrec_dist.data.store import open_store
from hetrec_dist.physics.ctf import corrected_defocus, particle_ctfs, particle_defocus_jacobians
from hetrec_dist.physics.projector import project, slice_geometry
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.dataset import simulate_dataset
from hetrec_dist.train.checkpoint import load_checkpoint

TINY = ["--batch-size", 64, "--zdim", 2, "--n-basis", 3, "--device", "cpu", "-q"]


def _moved_ctf(ctf, correction):
    """The ctf columns (B x 9, float64 tensor) with each defocus changed by correction (B x 3, Å), through
    corrected_defocus (numpy): independent of the jacobian's own parametrisation."""
    moved = ctf.clone()
    u, v, angle = corrected_defocus(*(ctf[:, i].numpy() for i in (2, 3, 4)), correction.numpy())
    moved[:, 2], moved[:, 3], moved[:, 4] = (torch.from_numpy(np.asarray(x)) for x in (u, v, angle))
    return moved


def _ctf_rows(n):
    rng = np.random.default_rng(2)
    return torch.from_numpy(np.stack([np.full(n, 48), np.full(n, 1.5), rng.uniform(9000, 25000, n),
                                      rng.uniform(8000, 9000, n), rng.uniform(0, 180, n), np.full(n, 300.0),
                                      np.full(n, 2.7), np.full(n, 0.07), rng.uniform(0, 40, n)], 1))


@pytest.mark.parametrize("astigmatism", [False, True])
def test_defocus_jacobian_equals_finite_differences_of_the_ctf(astigmatism):
    """dCTF/dδ at every point of a box-48 half-disk, with RELION's envelope, against central differences of
    particle_ctfs with the defocus changed through corrected_defocus (U, V and the angle rewritten)."""
    ctf, n_columns = _ctf_rows(6), 3 if astigmatism else 1
    envelope = torch.tensor([[1.0, 0.0], [0.8, 40.0]] * 3, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(torch.arange(-24, 24), torch.arange(0, 24), indexing="ij"), -1).view(-1, 2)
    jacobian = particle_defocus_jacobians(ctf, points, 48, 1.5, envelope, astigmatism)
    assert jacobian.shape == (6, len(points), n_columns)
    step = 1e-3
    for column in range(n_columns):
        delta = torch.zeros(6, 3, dtype=torch.float64)
        delta[:, column] = step
        difference = (particle_ctfs(_moved_ctf(ctf, delta), points, 48, 1.5, envelope)
                      - particle_ctfs(_moved_ctf(ctf, -delta), points, 48, 1.5, envelope)) / (2 * step)
        torch.testing.assert_close(jacobian[..., column], difference, rtol=1e-5, atol=1e-7)
    assert jacobian.abs().max() > 1e-4  # the CTF does move with the defocus


def test_corrected_defocus_keeps_an_unchanged_defocus_and_writes_relions_convention():
    u, v, angle = corrected_defocus(np.array([15000.0, 9000.0]), np.array([14000.0, 9500.0]),
                                    np.array([30.0, 170.0]), np.zeros((2, 3)))
    np.testing.assert_allclose(u, [15000, 9500])  # U >= V: the second swapped, its angle turned by 90°
    np.testing.assert_allclose(v, [14000, 9000])
    np.testing.assert_allclose(angle, [30, 80])


@pytest.mark.parametrize("astigmatism", [False, True])
def test_defocus_gradient_equals_finite_differences(astigmatism):
    """The gradient defocus_normal_equations gives, of each image's data term (with noise weights) with
    respect to its defocus and its slice's scale, against central differences of that term computed through
    the projector and particle_ctfs at the forward's latent, in float64."""
    model = _float64_model(False)
    n_images, n_own = 4, 3 if astigmatism else 1
    batch = {"images": torch.randn(n_images, 24, 24, dtype=torch.float64),
             "rotations": torch.from_numpy(Rotation.random(n_images, random_state=1).as_matrix()),
             "shifts": torch.randn(n_images, 2, dtype=torch.float64), "ctf": _ctf_rows(n_images)}
    batch["ctf"][:, 0], batch["ctf"][:, 1] = 24, 2.0
    noise_weights = torch.rand(n_images, len(model.disk.weights), dtype=torch.float64) + 0.5
    out = model(batch)
    gradient, hessian = model.defocus_normal_equations(batch, out, noise_weights, astigmatism)
    assert gradient.shape == (n_images, n_own + 2)
    geometry = slice_geometry(batch["rotations"], model.disk.coords, model.half_ball, None, 1)
    slices = torch.view_as_complex(project(model.basis, model.basis_weights(out["mu"]), geometry))
    radius_squared = (model.disk.coords ** 2).sum(1) / model.disk.radius ** 2

    def data_terms(change):  # the defocus' 3 columns (Å), then the slice's scale a + b r²
        moved = {**batch, "ctf": _moved_ctf(batch["ctf"], change[:, :3])}
        scale = 1 + change[:, 3:4] + change[:, 4:5] * radius_squared
        residual = model.observed_spectra(moved) - model.ctf(moved) * slices * scale
        return 0.5 * (model.disk.weights * noise_weights * residual.abs() ** 2).sum(1)

    columns = list(range(n_own)) + [3, 4]
    differences = torch.zeros(n_images, len(columns), dtype=torch.float64)
    for k, column in enumerate(columns):
        step = 1e-2 if column < 3 else 1e-6  # Å; a scale
        delta = torch.zeros(n_images, 5, dtype=torch.float64)
        delta[:, column] = step
        differences[:, k] = ((data_terms(delta) - data_terms(-delta)) / (2 * step)).detach()
    torch.testing.assert_close(gradient, differences, rtol=1e-5, atol=1e-6 * differences.abs().max().item())
    assert torch.all(torch.linalg.eigvalsh(hessian) > 0)  # Gauss-Newton: positive definite


def test_half_set_fsc_is_the_fsc_of_the_half_maps():
    """HetVAE.half_set_fsc, from the halves' coefficients, against analysis.fsc's FSC of the two real-space
    half-maps at the latent prior's mean; halves that share half of their signal."""
    from hetrec_dist.analysis.fsc import fsc_curve

    model = _float64_model(True)
    shared = model.components(1)
    model.set_components(0.5 * shared + 0.5 * torch.randn_like(shared), 2)
    # the x = 0 plane Hermitian, as a real map's is (a trained basis' is, near enough), for irfftn to keep it
    rows = {tuple(voxel): row for row, voxel in enumerate(model.half_ball.coords.tolist())}
    mates = torch.tensor([rows[(0, -y, -z)] for (x, y, z) in rows if x == 0])
    plane = torch.tensor([row for (x, y, z), row in rows.items() if x == 0])
    for half_set in (1, 2):
        components = model.components(half_set)
        components[plane] = (components[plane] + components[mates].conj()) / 2
        model.set_components(components, half_set)
    with torch.no_grad():
        maps = [model.volume(torch.zeros(model.shape.zdim, dtype=torch.float64), h).numpy() for h in (1, 2)]
    expected = np.asarray(fsc_curve(*maps))
    fsc = model.half_set_fsc().numpy()[:len(expected)]
    np.testing.assert_allclose(fsc, expected, atol=1e-6)
    assert 0.2 < np.median(fsc[2:]) < 0.9  # neither the same maps nor unrelated ones


@pytest.fixture(scope="module")
def defocus_sims(tmp_path_factory):
    """The same 1,600 particles of the hinge held still (box 64, SNR 10) with exact defoci and with
    N(0, 400 Å) added to each, converted to stores."""
    root = tmp_path_factory.mktemp("defocus_sims")
    still = dataclasses.replace(hinge_model(), hinge_atoms=np.zeros_like(hinge_model().hinge_atoms))
    stores = {}
    for name, errors in (("exact", {}), ("errors", {"defocus_error_A": 400.0})):
        simulate_dataset(str(root / name), still, n=1600, box=64, snr=10.0, seed=5, show_progress=False, **errors)
        run_cli("convert", root / name / "particles.star", "-o", root / f"{name}.zarr", "-q")
        stores[name] = root / f"{name}.zarr"
    return root, stores


def _mean_defocus_errors(ctf, truth):
    return 0.5 * (ctf[:, 2] + ctf[:, 3]) - 0.5 * (truth["defocus_u_A"] + truth["defocus_v_A"])


REFINE = ["--epochs", 8, "--refine-ctf", "--half-sets", "--ctf-warmup", 2, "--batch-size", 128, "--zdim", 2,
          "--n-basis", 4, "--device", "cpu", "-q"]
REFINE_ALL = ["--refine-ctf", "--half-sets", "--refine-astigmatism", "--ctf-warmup", 1]


def test_refinement_brings_400_A_errors_under_100_A_and_leaves_exact_defoci_alone(defocus_sims):
    """Against the simulator's true defoci (ground_truth/ctf.npz); the STAR file holds the erroneous ones."""
    root, stores = defocus_sims
    truth = np.load(root / "exact" / "ground_truth" / "ctf.npz")
    np.testing.assert_allclose(_mean_defocus_errors(open_store(str(stores["exact"]))["ctf"][:], truth), 0, atol=0.01)
    given = _mean_defocus_errors(open_store(str(stores["errors"]))["ctf"][:], truth)
    assert 250 < np.median(np.abs(given)) < 300  # N(0, 400): median |error| 270
    run_cli("train", stores["errors"], "-o", root / "refined", *REFINE)
    refined = _mean_defocus_errors(np.load(root / "refined" / "ctf.npz")["ctf"], truth)
    assert np.median(np.abs(refined)) < 100, np.median(np.abs(refined))

    run_cli("train", stores["exact"], "-o", root / "exact_refined", *REFINE)
    corrections = np.load(root / "exact_refined" / "ctf.npz")["defocus_correction_A"]
    assert np.median(np.abs(corrections[:, 0])) < 50
    assert np.all(corrections[:, 1:] == 0)  # the astigmatism is left alone without --refine-astigmatism


@pytest.fixture(scope="module")
def refined_run(sim_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("ctf_refined") / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 3, *REFINE_ALL, *TINY)
    return run


def test_resumed_refinement_ends_where_an_uninterrupted_one_ends(sim_store, refined_run, tmp_path):
    run = tmp_path / "resumed"
    run_cli("train", sim_store, "-o", run, "--epochs", 2, *REFINE_ALL, *TINY)
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q")
    resumed, whole = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, refined_run))
    assert torch.all(whole["ctf_corrections"]["table"][:, 1:].any(0))  # the astigmatism refined too
    torch.testing.assert_close(resumed["ctf_corrections"]["table"], whole["ctf_corrections"]["table"],
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.load(run / "ctf.npz")["ctf"], np.load(refined_run / "ctf.npz")["ctf"], atol=1e-2)


def test_export_writes_the_refined_defoci_that_convert_reads_back(sim_dir, refined_run, tmp_path):
    """STAR, .cs and ctf.pkl from `hetrec export`, and a STAR subset from `hetrec select`, hold the defoci of
    RUN/ctf.npz: converted again (or unpickled) they give them back; every other column is the input's."""
    from test_convert import write_cryosparc

    refined = np.load(refined_run / "ctf.npz")["ctf"]
    run_cli("export", refined_run, "-o", tmp_path / "refined.star")
    run_cli("convert", tmp_path / "refined.star", "-o", tmp_path / "refined.zarr", "--datadir", sim_dir, "-q")
    np.testing.assert_allclose(open_store(str(tmp_path / "refined.zarr"))["ctf"][:], refined, rtol=1e-6, atol=1e-3)
    written = starfile.read(tmp_path / "refined.star", always_dict=True)["particles"]
    given = starfile.read(f"{sim_dir}/particles.star", always_dict=True)["particles"]
    for column in ("rlnImageName", "rlnAngleRot", "rlnOpticsGroup"):
        assert written[column].tolist() == given[column].tolist()
    assert np.median(np.abs(written["rlnDefocusU"] - given["rlnDefocusU"])) > 1  # the refined ones, not the input's

    run_cli("export", refined_run, "-o", tmp_path / "ctf.pkl", "--ctf")
    with open(tmp_path / "ctf.pkl", "rb") as f:
        table = pickle.load(f)
    assert table.shape == (300, 9) and table.dtype == np.float32
    np.testing.assert_allclose(table[:, 2:], refined[:, 2:], rtol=1e-6)
    pixel_size_A = open_store(str(tmp_path / "refined.zarr")).attrs["pixel_size_A"]
    np.testing.assert_allclose(table[:, :2], np.broadcast_to([32, pixel_size_A], (300, 2)))

    run_cli("analyze", refined_run, "--k", 3, "--no-umap", "--device", "cpu")
    labels = np.load(refined_run / "analyze.3" / "kmeans_labels.npy")
    run_cli("select", refined_run, "--k", 3, "--clusters", "1", "-o", tmp_path / "subset.star")
    subset = starfile.read(tmp_path / "subset.star", always_dict=True)["particles"]
    np.testing.assert_allclose(subset["rlnDefocusV"], written["rlnDefocusV"][labels == 1])

    from hetrec_dist.cli.explore import load_explorer

    explorer = load_explorer(str(refined_run), out_dir=str(tmp_path / "explore"), device="cpu", with_umap=False)
    given_ctf = open_store(str(tmp_path / "refined.zarr"))  # converted from the export: the refined values
    np.testing.assert_allclose(explorer.colourings["defocus correction (Å)"].values,
                               refined[:, 2:4].mean(1) - given[["rlnDefocusU", "rlnDefocusV"]].to_numpy().mean(1),
                               atol=1e-2)
    paths, _ = explorer.save_selection("some", np.arange(0, 300, 7))
    np.testing.assert_allclose(starfile.read(paths[2], always_dict=True)["particles"]["rlnDefocusU"],
                               given_ctf["ctf"][:][np.arange(0, 300, 7), 2], rtol=1e-6)

    write_cryosparc(sim_dir, tmp_path / "particles.cs")
    run_cli("convert", tmp_path / "particles.cs", "-o", tmp_path / "cs.zarr", "--datadir", sim_dir, "-q")
    run_cli("train", tmp_path / "cs.zarr", "-o", tmp_path / "cs_run", "--epochs", 2, "--refine-ctf",
            "--half-sets", "--refine-astigmatism", "--ctf-warmup", 1, *TINY)
    run_cli("export", tmp_path / "cs_run", "-o", tmp_path / "refined.cs")
    run_cli("convert", tmp_path / "refined.cs", "-o", tmp_path / "refined_cs.zarr", "--datadir", sim_dir, "-q")
    np.testing.assert_allclose(open_store(str(tmp_path / "refined_cs.zarr"))["ctf"][:],
                               np.load(tmp_path / "cs_run" / "ctf.npz")["ctf"], rtol=1e-6, atol=1e-3)


def test_options_and_exports_that_need_a_refined_ctf_are_refused(sim_store, refined_run, two_epoch_run, tmp_path):
    for option in (["--refine-astigmatism"], ["--ctf-warmup", 1], ["--defocus-prior", 300]):
        result = run_cli("train", sim_store, "-o", tmp_path / "no", *option, *TINY, expect_ok=False)
        assert_one_line_error(result, option[0], "give --refine-ctf too")
    assert_one_line_error(run_cli("export", two_epoch_run, "-o", tmp_path / "p.star", expect_ok=False),
                          "did not refine its poses or CTFs")
    assert_one_line_error(run_cli("export", two_epoch_run, "-o", tmp_path / "c.pkl", "--ctf", expect_ok=False),
                          "did not refine its CTFs")
    assert_one_line_error(run_cli("export", refined_run, "-o", tmp_path / "poses.pkl", expect_ok=False),
                          "did not refine its poses", "give --ctf")
    assert_one_line_error(run_cli("export", refined_run, "-o", tmp_path / "ctf.pkl", expect_ok=False),
                          "named like a ctf.pkl")
    assert_one_line_error(run_cli("export", refined_run, "-o", tmp_path / "p.star", "--ctf", expect_ok=False),
                          "--ctf writes cryoDRGN's ctf.pkl")
    assert_one_line_error(run_cli("train", sim_store, "-o", tmp_path / "no", "--refine-ctf", *TINY, expect_ok=False),
                          "the half-maps' FSC", "give --half-sets too")
    result = run_cli("train", sim_store, "-o", tmp_path / "warm", "--epochs", 1, "--refine-ctf", "--half-sets",
                     *TINY[:-1])
    assert "no defocus will be refined" in result.output
    assert_one_line_error(run_cli("export", tmp_path / "warm", "-o", tmp_path / "w.star", expect_ok=False),
                          "has refined no CTF yet")
    result = run_cli("reconstruct", tmp_path / "warm", "-o", tmp_path / "map", "-q")
    assert "refined" not in result.output  # the store's CTFs, as nothing was refined yet
    (tmp_path / "tiny.yaml").write_text("defocus_prior_A: 1.0e-200\n")  # a precision beyond float range
    result = run_cli("train", sim_store, "-o", tmp_path / "tiny", "--config", tmp_path / "tiny.yaml",
                     "--refine-ctf", "--half-sets", *TINY, expect_ok=False)
    assert_one_line_error(result, "defocus_prior_A", "at least 1 Å")
    assert not (tmp_path / "tiny").exists()


def test_the_corrections_sizes_describe_the_runs_particles_only():
    """A run on a subset (--ind): the sizes train.log and TensorBoard show are of its particles', not of the
    store's others (whose corrections stay 0)."""
    from hetrec_dist.train.ctf_refinement import CtfCorrections, CtfRefinementSettings

    corrections = CtfCorrections(10, CtfRefinementSettings(True, False, 0, 200.0, 500.0), "given",
                                 rows=np.array([1, 3, 5]))
    corrections.table[[1, 3, 5], 0] = torch.tensor([100.0, -200.0, 300.0], dtype=torch.float64)
    sizes = corrections.sizes()
    assert sizes["defocus_A_p50"] == 200 and sizes["defocus_A_mean"] == 200


def test_simulated_defocus_errors_are_the_ones_asked_for(tmp_path):
    """`hetrec simulate --defocus-error-A --astigmatism-error-A`: the STAR's defoci differ from
    ground_truth/ctf.npz by N(0, σ) in the mean defocus and in each astigmatism component, as RELION writes
    them (U >= V, the angle in [0, 180))."""
    simulate_dataset(str(tmp_path / "sim"), hinge_model(), n=2000, box=16, snr=1.0, seed=1, show_progress=False,
                     defocus_error_A=300.0, astigmatism_error_A=100.0)
    written = starfile.read(tmp_path / "sim" / "particles.star", always_dict=True)["particles"]
    truth = np.load(tmp_path / "sim" / "ground_truth" / "ctf.npz")

    def mean_and_astigmatism(u, v, angle_deg):
        half, angle = 0.5 * (np.asarray(u) - v), np.radians(angle_deg)
        return 0.5 * (np.asarray(u) + v), half * np.cos(2 * angle), half * np.sin(2 * angle)

    given = mean_and_astigmatism(written["rlnDefocusU"], written["rlnDefocusV"], written["rlnDefocusAngle"])
    true = mean_and_astigmatism(truth["defocus_u_A"], truth["defocus_v_A"], truth["defocus_angle_deg"])
    for component, sigma in zip(range(3), (300, 100, 100)):
        errors = np.asarray(given[component]) - true[component]
        assert abs(errors.std() - sigma) < 0.05 * sigma and abs(errors.mean()) < 0.1 * sigma
    assert np.all(written["rlnDefocusU"] >= written["rlnDefocusV"])
    assert np.all((written["rlnDefocusAngle"] >= 0) & (written["rlnDefocusAngle"] < 180))
