import html
import json
import os
import pickle
import re

import mrcfile
import numpy as np
import pytest
import starfile

from conftest import assert_one_line_error, run_cli

from hetrec_dist.analysis.fsc import fsc_curve, resolution_at
from hetrec_dist.analysis.latent import kmeans, pca, traversal


def fsc_by_shell_masks(a, b):
    """FSC written independently: centred spectra, one boolean shell mask at a time."""
    box = a.shape[0]
    fa, fb = (np.fft.fftshift(np.fft.fftn(m)) for m in (a, b))
    grid = np.arange(box) - box // 2
    radius = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    curve = []
    for shell in range(box // 2):
        mask = np.abs(radius - shell) < 0.5
        curve.append(np.real(np.sum(fa[mask] * np.conj(fb[mask])))
                     / np.sqrt(np.sum(np.abs(fa[mask]) ** 2) * np.sum(np.abs(fb[mask]) ** 2)))
    return np.array(curve)


def test_fsc_matches_an_independent_computation_and_the_expected_snr():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(24, 24, 24))
    a, b = signal + 0.5 * rng.normal(size=signal.shape), signal + 0.5 * rng.normal(size=signal.shape)
    curve = fsc_curve(a, b)
    np.testing.assert_allclose(curve, fsc_by_shell_masks(a, b), atol=1e-10)
    # white signal of variance 1 and noise of variance 0.25 in each map: FSC = 1 / 1.25 in every shell
    assert abs(curve[3:].mean() - 0.8) < 0.02
    np.testing.assert_allclose(fsc_curve(a, a), 1.0)
    assert resolution_at(np.array([1, 0.9, 0.6, 0.4, 0.1]), 0.5, 10, 2.0) == 10 * 2.0 / 3


def test_fsc_command_and_its_errors(sim_dir, tmp_path):
    truth = os.path.join(sim_dir, "ground_truth")
    out = json.loads(run_cli("fsc", os.path.join(truth, "map_00.mrc"), os.path.join(truth, "map_00.mrc"),
                             "--json", "--mask", "sphere", "--plot", tmp_path / "fsc.png").output)
    assert out["mean_fsc"] > 0.999 and (tmp_path / "fsc.png").stat().st_size > 1000
    with mrcfile.open(os.path.join(truth, "map_00.mrc")) as mrc:
        full, pixel_size_A = mrc.data.astype(np.float64), float(mrc.voxel_size.x)
    extent_A = full.shape[0] * pixel_size_A
    mrcfile.write(tmp_path / "small.mrc", np.ones((16, 16, 16), np.float32), voxel_size=extent_A / 16 * 1.5)
    mrcfile.write(tmp_path / "coarse.mrc", np.ones((32, 32, 32), np.float32), voxel_size=5.0)
    result = run_cli("fsc", os.path.join(truth, "map_00.mrc"), tmp_path / "small.mrc", expect_ok=False)
    assert_one_line_error(result, "different boxes")
    # a map of the same extent on a smaller box (a run's, against the full-size truth): cropped, as eval does
    from hetrec_dist.physics.fourier import fourier_crop

    mrcfile.write(tmp_path / "cropped.mrc", fourier_crop(full, 16, ndim=3).astype(np.float32),
                  voxel_size=extent_A / 16)
    result = run_cli("fsc", tmp_path / "cropped.mrc", os.path.join(truth, "map_00.mrc"), "--json")
    assert "Fourier-cropped from box 32 to 16" in result.output
    assert json.loads(result.output[result.output.index("{"):])["mean_fsc"] > 0.999
    result = run_cli("fsc", os.path.join(truth, "map_00.mrc"), tmp_path / "coarse.mrc", expect_ok=False)
    assert_one_line_error(result, "different pixel sizes")


def test_latent_linear_r2_sees_a_coordinate_in_any_direction():
    from hetrec_dist.analysis.ground_truth import latent_linear_r2

    rng = np.random.default_rng(2)
    coordinate = rng.uniform(size=4000)
    noise = rng.normal(size=(4000, 4))
    z = noise.copy()
    z[:, 2] += 3 * coordinate  # hidden in the third of four equally spread directions
    assert latent_linear_r2(z, coordinate) > 0.4
    assert abs(latent_linear_r2(noise, coordinate)) < 0.01


def test_pca_kmeans_and_traversals_on_known_latents():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 5]], dtype=float)
    truth = rng.integers(0, 4, 20000)
    z = centres[truth] + rng.normal(scale=0.5, size=(20000, 3))
    fitted = pca(z)
    assert np.all(np.diff(fitted.explained_variance) <= 0)
    np.testing.assert_allclose(np.abs(fitted.components @ fitted.components.T), np.eye(3), atol=1e-8)
    found, labels = kmeans(z, 4, seed=0)
    # each true cluster maps to exactly one found cluster
    pairs = set(zip(truth, labels))
    assert len(pairs) == 4 and len({found_label for _, found_label in pairs}) == 4
    path = traversal(z, fitted, 0, n_points=5)
    steps = fitted.project(path)
    assert np.all(np.diff(steps[:, 0]) > 0) and np.allclose(steps[:, 1:], 0, atol=1e-8)


@pytest.fixture(scope="module")
def analyzed_run(sim_store, sim_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("analysis") / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 2, "--batch-size", 64, "--zdim", 3, "--n-basis", 2, "-q")
    run_cli("analyze", run, "--k", 4, "--gt", os.path.join(sim_dir, "ground_truth"), "--device", "cpu")
    return run


def test_analyze_writes_maps_plots_page_and_z_pkl(analyzed_run):
    out = analyzed_run / "analyze.4"
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["cluster_sizes"]) == 300 and len(summary["maps"]["kmeans"]) == 4
    assert len(summary["maps"]["pc1"]) == len(summary["maps"]["pc2"]) == 10
    for group in summary["maps"].values():
        for name in group:
            with mrcfile.open(out / "maps" / name) as mrc:
                assert mrc.data.shape == (32, 32, 32) and abs(float(mrc.voxel_size.x) - 4.0) < 1e-5
    page = (out / "index.html").read_text()
    for plot in summary["plots"]:
        assert f"plots/{plot}" in page and (out / "plots" / plot).stat().st_size > 1000
    assert "pca_ground_truth.png" in summary["plots"]
    with open(analyzed_run / "z.pkl", "rb") as f:
        np.testing.assert_array_equal(pickle.load(f), np.load(analyzed_run / "z.npy"))


def test_the_page_shows_map_pictures_confounders_and_curves_and_links_only_files_that_exist(analyzed_run):
    out = analyzed_run / "analyze.4"
    summary = json.loads((out / "summary.json").read_text())
    expected = {"cluster_maps.png", "pc1_traversal.png", "pc2_traversal.png", "training_curves.png",
                "pca_by_defocus.png", "pca_by_optics_group.png", "pca_by_tilt.png", "pca_by_in_plane_angle_psi.png",
                "pca_by_particle_index.png", "umap_clusters.png", "umap_ground_truth.png"}
    assert expected <= set(summary["plots"])
    page = (out / "index.html").read_text()
    named = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {f"plots/{p}" for p in summary["plots"]} <= set(named) and "chimerax.cxc" in named
    assert {f"maps/{m}" for group in summary["maps"].values() for m in group} <= set(named)
    for name in named:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_the_chimerax_script_opens_every_map_once_at_a_level_inside_their_range(analyzed_run):
    """ChimeraX runs a .cxc in its own folder: every path must exist relative to it; models are numbered in
    the order opened (each cluster map one, each traversal one volume series)."""
    out = analyzed_run / "analyze.4"
    summary = json.loads((out / "summary.json").read_text())
    lines = [line for line in (out / "chimerax.cxc").read_text().splitlines() if line and not line.startswith("#")]
    assert {line.split()[0] for line in lines} <= {"open", "volume", "tile", "hide"}
    opened = [line.split()[1:] for line in lines if line.startswith("open")]
    assert opened[0] == [f"maps/{m}" for m in summary["maps"]["kmeans"]]
    assert opened[1] == [f"maps/{m}" for m in summary["maps"]["pc1"]] + ["vseries", "true"]
    assert opened[2] == [f"maps/{m}" for m in summary["maps"]["pc2"]] + ["vseries", "true"]
    assert all((out / path).is_file() for paths in opened for path in paths if path.startswith("maps/"))
    assert "volume #1-4 level" in lines[1] and lines[2] == "tile #1-4"
    assert [line.split()[1] for line in lines if line.startswith("volume")] == ["#1-4", "#5", "#6"]
    level = summary["chimerax_level"]
    first = mrcfile.read(out / "maps" / summary["maps"]["kmeans"][0])
    assert first.min() < level < first.max() and abs((first > level).mean() - 0.05) < 0.01


def test_training_curves_read_the_last_line_of_each_epoch(tmp_path):
    from hetrec_dist.analysis.analyze import training_epochs

    (tmp_path / "train.log").write_text(
        "2026-01-01 00:00:00,000 epoch 1: loss 0.5, data 0.4, kl 2.0, images_per_s 10\n"
        "2026-01-01 00:00:00,000 epoch 2: loss 0.45, data 0.39, kl 3.0, images_per_s 10\n"
        "2026-01-01 00:00:00,000 epoch 2 eval: mean FSC 0.4\n"  # resumed from epoch 1:
        "2026-01-01 00:00:00,000 epoch 2: loss 0.44, data 0.38, kl 3.5, images_per_s 10\n")
    assert training_epochs(tmp_path) == {"epoch": [1, 2], "loss": [0.5, 0.44], "data": [0.4, 0.38], "kl": [2.0, 3.5]}
    assert training_epochs(tmp_path / "missing") is None


def test_select_writes_the_clusters_particles_as_star_and_indices(analyzed_run, sim_dir, tmp_path):
    labels = np.load(analyzed_run / "analyze.4" / "kmeans_labels.npy")
    run_cli("select", analyzed_run, "--k", 4, "--clusters", "1,3", "-o", tmp_path / "subset.star")
    original = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)
    subset = starfile.read(tmp_path / "subset.star", always_dict=True)
    chosen = np.flatnonzero(np.isin(labels, [1, 3]))
    assert list(subset["particles"]["rlnImageName"]) == list(original["particles"]["rlnImageName"].iloc[chosen])
    assert subset["optics"].equals(original["optics"])
    again = run_cli("select", analyzed_run, "--k", 4, "--clusters", "1", "-o", tmp_path / "subset.star",
                    expect_ok=False)
    assert_one_line_error(again, "subset.star already exists", "--overwrite")
    run_cli("select", analyzed_run, "--k", 4, "--clusters", "1", "-o", tmp_path / "subset.star", "--overwrite")
    run_cli("select", analyzed_run, "--k", 4, "--clusters", "2", "-o", tmp_path / "ind.pkl")
    with open(tmp_path / "ind.pkl", "rb") as f:
        np.testing.assert_array_equal(pickle.load(f), np.flatnonzero(labels == 2))
    assert_one_line_error(run_cli("select", analyzed_run, "--k", 4, "--clusters", "7", "-o", tmp_path / "x.star",
                                  expect_ok=False), "7", "do not exist")
    assert_one_line_error(run_cli("select", analyzed_run, "--k", 5, "--clusters", "1", "-o", tmp_path / "x.star",
                                  expect_ok=False), "analyze.5")
    assert_one_line_error(run_cli("select", analyzed_run, "--k", 4, "--clusters", "1", "-o", tmp_path / "x.cs",
                                  expect_ok=False), ".star subset")


def test_eval_reports_the_quality_of_the_maps_it_writes(analyzed_run, sim_dir):
    """Two epochs on the 300 particles (SNR 0.5, box 32, 4 Å) make every conformation's map reach a mean FSC
    above 0.6 and FSC = 0.5 finer than 10 Å (measured: 0.69-0.77, 8.5-9.1 Å); eval's numbers are those of an
    independent FSC between the maps it writes and the true maps."""
    from hetrec_dist.analysis.ground_truth import read_ground_truth

    output = run_cli("eval", analyzed_run, "--gt", os.path.join(sim_dir, "ground_truth"), "--device", "cpu").output
    result = json.loads((analyzed_run / "eval.json").read_text())
    _, truths = read_ground_truth(os.path.join(sim_dir, "ground_truth"))
    assert len(result["maps"]) == len(truths) == 5 and "mean FSC" in output
    for index, (summary, (_, truth)) in enumerate(zip(result["maps"], truths)):
        decoded = mrcfile.read(analyzed_run / "eval_maps" / f"decoded_{index:02d}.mrc")
        assert abs(fsc_by_shell_masks(decoded, truth)[1:].mean() - summary["mean_fsc"]) < 1e-3
        assert summary["mean_fsc"] > 0.6 and summary["resolution_0.5_A"] < 10.0, summary


def test_the_page_numbers_clusters_along_pc1_says_what_each_plot_shows_and_the_eval_of_its_epoch(analyzed_run,
                                                                                                 sim_dir, tmp_path):
    import shutil

    from hetrec_dist.analysis.analyze import caption
    from hetrec_dist.analysis.latent import pca

    run = tmp_path / "run"
    shutil.copytree(analyzed_run, run)
    run_cli("eval", run, "--gt", os.path.join(sim_dir, "ground_truth"), "--device", "cpu")
    result = run_cli("analyze", run, "--k", 4, "--no-umap", "--device", "cpu")
    assert "replacing the earlier analysis" in result.output
    out = run / "analyze.4"
    z, labels = np.load(run / "z.npy"), np.load(out / "kmeans_labels.npy")
    centres_pc1 = [pca(z).project(z[labels == c].mean(0, keepdims=True))[0, 0] for c in range(4)]
    assert np.all(np.diff(centres_pc1) > 0)  # cluster 0 at PC1's low end
    page = (out / "index.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for plot in summary["plots"]:
        assert caption(plot) != plot and html.escape(caption(plot)) in page
    evaluation = json.loads((run / "eval.json").read_text())
    assert f"Mean FSC {evaluation['mean_fsc']:.3f}" in page
    assert "one direction dominates" in page or "no direction dominates" in page
    assert "hetrec explore" in page


def test_analysis_needs_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("analyze", tmp_path / "empty", expect_ok=False), "no checkpoint")


def test_train_evaluates_against_ground_truth_during_training(sim_store, sim_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli("train", sim_store, "-o", tmp_path / "run", "--epochs", 2, "--batch-size", 100, "--zdim", 2,
            "--n-basis", 2, "--gt", os.path.join(sim_dir, "ground_truth"), "--eval-every", 1, "-q")
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    assert [e.step for e in events.Scalars("eval/mean_fsc")] == [1, 2]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["epoch"] == 2


def test_junk_separation_sees_junk_in_any_latent_direction():
    from hetrec_dist.analysis.ground_truth import junk_separation_auc

    rng = np.random.default_rng(4)
    junk = rng.uniform(size=4000) < 0.1
    z = rng.normal(size=(4000, 3))
    assert abs(junk_separation_auc(z, junk) - 0.5) < 0.05
    z[junk] += [0.0, 3.0, 0.0]
    assert junk_separation_auc(z, junk) > 0.95


def test_the_latent_spread_says_when_no_direction_dominates(analyzed_run):
    from hetrec_dist.analysis.latent import latent_spread

    rng = np.random.default_rng(5)
    coordinate = rng.uniform(size=3000)
    one_axis = np.column_stack([6 * coordinate, rng.normal(size=(3000, 3))])
    rotated = one_axis @ np.linalg.qr(rng.normal(size=(4, 4)))[0]  # the motion along a direction, not an axis
    shares, dominant, _ = latent_spread(rotated)
    assert dominant and shares[0] > 0.35 and abs(shares.sum() - 1) < 1e-9
    spread = rng.normal(size=(3000, 6)) * [1.0, 0.95, 0.9, 0.9, 0.85, 0.3]
    _, dominant, line = latent_spread(spread)
    assert not dominant and "no direction dominates" in line
    summary = json.loads((analyzed_run / "analyze.4" / "summary.json").read_text())
    page = (analyzed_run / "analyze.4" / "index.html").read_text()
    assert ("no direction dominates" in page) == (not summary["one_direction_dominates"])


def test_analyze_without_the_store_warns_and_leaves_out_only_the_confounder_plots(analyzed_run, tmp_path):
    import shutil

    import yaml

    run = tmp_path / "moved"
    shutil.copytree(analyzed_run, run, ignore=shutil.ignore_patterns("analyze.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "store": str(tmp_path / "gone.zarr")}))
    result = run_cli("analyze", run, "--k", 3, "--device", "cpu", "--no-umap")
    assert "Warning: the run's store is not readable" in result.output and "no plots coloured by" in result.output
    summary = json.loads((run / "analyze.3" / "summary.json").read_text())
    assert not any(p.startswith(("pca_by_", "umap")) for p in summary["plots"])
    assert "cluster_maps.png" in summary["plots"]


def test_a_failed_analysis_leaves_the_previous_one_whole(analyzed_run, sim_dir, tmp_path):
    """The page, summary, labels and maps of analyze.K come from one run of analyze: a rerun that fails (here
    on a ground truth of other particles) changes none of them and leaves no half-written folder."""
    import shutil

    out = analyzed_run / "analyze.4"
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    truth = tmp_path / "truth"
    shutil.copytree(os.path.join(sim_dir, "ground_truth"), truth)
    np.save(truth / "coordinates.npy", np.load(truth / "coordinates.npy")[:100])
    result = run_cli("analyze", analyzed_run, "--k", 4, "--gt", truth, "--seed", 7, "--device", "cpu",
                     expect_ok=False)
    assert_one_line_error(result, "ground truth has 100 particles but the run 300 particles")
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert not (analyzed_run / "analyze.4.partial").exists()


def test_training_curves_skip_what_is_not_a_number(tmp_path):
    from hetrec_dist.analysis.analyze import training_epochs

    (tmp_path / "train.log").write_bytes(
        b"x epoch 1: loss 0.5, data 0.4, kl 2e+01, images_per_s 10\n"
        b"x epoch 2: loss ., data -, kl e\n\xff\xfe\n")
    assert training_epochs(tmp_path) == {"epoch": [1], "loss": [0.5], "data": [0.4], "kl": [20.0]}


def test_the_pictures_of_pc1s_two_ends_differ_where_the_domain_moves(sim_dir, tmp_path):
    """A model whose first latent axis moves the simulated hinge's domain (its mean volume the true map half
    way, its one basis volume half the difference of the true end maps): the analysis' PC1 maps at the
    traversal's ends differ where the true ends differ, the moving domain, and hardly where the static one is."""
    import torch

    from hetrec_dist.analysis.analyze import analyze_run
    from hetrec_dist.analysis.maps import map_pictures
    from hetrec_dist.model.hetvae import HetVAE
    from hetrec_dist.physics.maps import map_to_half_ball
    from hetrec_dist.train.config import TrainConfig

    first, last = (mrcfile.read(os.path.join(sim_dir, "ground_truth", f"map_0{i}.mrc")).astype(np.float32)
                   for i in (0, 4))
    model = HetVAE(TrainConfig(zdim=2, n_basis=1).model_shape(32, 4.0), pixel_size_A=4.0, init_scale=0.0)
    volumes = [torch.from_numpy(v) for v in ((first + last) / 2, (last - first) / 2)]
    model.set_components(torch.stack([map_to_half_ball(v, model.half_ball, 4.0) for v in volumes], 1))
    with torch.no_grad():
        model.decoder.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.decoder.bias.zero_()
    rng = np.random.default_rng(0)
    z = np.column_stack([rng.uniform(-1, 1, 2000), rng.normal(scale=0.1, size=2000)]).astype(np.float32)
    analyze_run(str(tmp_path), model.eval(), z, k=3, with_umap=False)
    maps = tmp_path / "analyze.3" / "maps"
    ends = [map_pictures(mrcfile.read(maps / f"pc1_{i:02d}.mrc"))["projection z"] for i in (0, 9)]
    decoded, moved = np.abs(ends[1] - ends[0]), np.abs(last.sum(0) - first.sum(0))  # projections along z
    particle = np.maximum(first.sum(0), last.sum(0)) > 0.2 * np.maximum(first.sum(0), last.sum(0)).max()
    moving = moved > np.quantile(moved[particle], 0.8)
    static = particle & (moved < np.quantile(moved[particle], 0.3))
    assert decoded[moving].mean() > 5 * decoded[static].mean(), (decoded[moving].mean(), decoded[static].mean())
    assert np.corrcoef(decoded.ravel(), moved.ravel())[0, 1] > 0.9


def test_a_graph_path_follows_the_data_around_a_gap_and_refuses_to_jump_between_islands():
    from hetrec_dist.analysis.latent import evenly_along, graph_path
    from hetrec_dist.errors import UserError

    rng = np.random.default_rng(0)
    angle = rng.uniform(0, np.pi, 3000)  # a half circle of radius 5: its ends are 10 apart across the gap
    z = np.column_stack([5 * np.cos(angle), 5 * np.sin(angle), rng.normal(scale=0.05, size=3000)])
    start, end = int(angle.argmin()), int(angle.argmax())
    path = graph_path(z, start, end)
    assert path[0] == start and path[-1] == end
    assert np.all(np.diff(angle[path]) > -0.05)  # along the arc, in order
    length = np.linalg.norm(np.diff(z[path], axis=0), axis=1).sum()
    assert 5 * np.pi * 0.98 < length < 5 * np.pi * 1.1  # the arc (15.7), not the chord (10)
    shown = evenly_along(z, path, 5)
    assert shown[0] == start and shown[-1] == end and np.all(np.diff(angle[shown]) > 0.5)
    np.testing.assert_array_equal(evenly_along(z, path[:4], 10), path[:4])  # a short path: each particle once
    islands = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 100])
    with pytest.raises(UserError, match="no chain of 10 nearest neighbours"):
        graph_path(islands, 0, 399)


def test_analyze_path_writes_maps_along_the_data_between_two_centres(analyzed_run, tmp_path):
    run_cli("analyze", analyzed_run, "--k", 4, "--path", "c0", "c3", "--no-umap", "--device", "cpu")
    out = analyzed_run / "analyze.4"
    summary = json.loads((out / "summary.json").read_text())
    path = np.loadtxt(out / "path_particles.txt", dtype=int)
    centres = summary["centre_particles"]
    assert path[0] == centres[0] and path[-1] == centres[3] and summary["path"]["n_particles"] == len(path)
    shown = summary["path"]["map_particles"]
    assert 2 <= len(shown) <= 10 and len(set(shown)) == len(shown) and set(shown) <= set(path.tolist())
    assert summary["maps"]["path"] == [f"path_{i:02d}.mrc" for i in range(len(shown))]
    page = (out / "index.html").read_text()
    for name in ("plots/path_traversal.png", "plots/path_on_pca.png", f"maps/{summary['maps']['path'][-1]}"):
        assert name in page and (out / name).stat().st_size > 1000
    assert "maps/path_00.mrc" in (out / "chimerax.cxc").read_text()
    for ends, fragment in ((("c4", "1"), "k-means centres are c0 to c3"), (("x", "1"), "give a particle index"),
                           (("0", "300"), "particles are 0 to 299"), (("7", "7"), "both ends are particle 7"),
                           (("c1", str(centres[1])), f"both ends are particle {centres[1]}")):
        result = run_cli("analyze", analyzed_run, "--k", 4, "--path", *ends, "--no-umap", expect_ok=False)
        assert_one_line_error(result, "--path", fragment)
