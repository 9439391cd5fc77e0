"""hetrec explore without a browser: its maps against the model's own, the mesh against a known sphere, the
selections against an independent point-in-polygon count, the files written, the page's callbacks through
Flask's test client, and the token."""

import json
import os
import pickle

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from hetrec_dist.cli.explore import _is_loopback, load_explorer
from hetrec_dist.errors import UserError
from hetrec_dist.explore.app import build_app
from hetrec_dist.explore.headless import callback_body
from hetrec_dist.explore.session import MapMaker, in_box, in_polygon, mesh


@pytest.fixture(scope="module")
def explorer(two_epoch_run, tmp_path_factory):
    return load_explorer(str(two_epoch_run), out_dir=str(tmp_path_factory.mktemp("explore")), device="cpu")


def test_maps_from_the_precomputed_basis_equal_the_models(explorer):
    maps = MapMaker(explorer.model)
    for latent in np.random.default_rng(0).normal(size=(3, explorer.z.shape[1])).astype(np.float32) * 2:
        with torch.no_grad():
            expected = explorer.model.volume(torch.from_numpy(latent)).numpy()
        np.testing.assert_allclose(maps.map_at(latent), expected, atol=1e-5 * np.abs(expected).max())


def test_the_mesh_of_a_sphere_lies_on_the_sphere():
    box, radius_px, pixel_size_A = 48, 12.0, 1.5
    grid = np.arange(box) - box / 2
    distance = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    vertices, faces = mesh(radius_px - distance, 0.0, pixel_size_A)
    centre_A = box / 2 * pixel_size_A
    radii_A = np.linalg.norm(vertices - centre_A, axis=1)
    assert len(faces) > 1000
    np.testing.assert_allclose(radii_A, radius_px * pixel_size_A, atol=0.05 * radius_px * pixel_size_A)
    assert mesh(radius_px - distance, 1e6, pixel_size_A)[1].shape == (0, 3)  # a level above the map: no faces


def test_lasso_and_box_select_what_an_independent_count_finds():
    xy = np.random.default_rng(1).uniform(-1, 1, size=(5000, 2))
    # a triangle: inside where all three edge functions agree in sign
    xs, ys = [-0.8, 0.9, 0.0], [-0.7, -0.6, 0.8]
    signs = []
    for i in range(3):
        (x0, y0), (x1, y1) = (xs[i], ys[i]), (xs[(i + 1) % 3], ys[(i + 1) % 3])
        signs.append((x1 - x0) * (xy[:, 1] - y0) - (y1 - y0) * (xy[:, 0] - x0))
    inside = np.flatnonzero(np.all(np.array(signs) > 0, axis=0) | np.all(np.array(signs) < 0, axis=0))
    np.testing.assert_array_equal(in_polygon(xy, xs, ys), inside)
    box = in_box(xy, [0.5, -0.2], [-0.1, 0.3])
    np.testing.assert_array_equal(box, np.flatnonzero((abs(xy[:, 0] - 0.15) <= 0.35) & (abs(xy[:, 1] - 0.1) <= 0.2)))


def test_a_saved_selection_is_the_input_rows_and_star_rows_of_its_particles(explorer, sim_dir):
    chosen = explorer.select("PCA", box={"x": [-10, 0], "y": [-10, 10]})
    assert 0 < len(chosen) < explorer.n_particles
    paths, note = explorer.save_selection("left", chosen)
    assert note is None and [os.path.basename(p) for p in paths] == ["left.pkl", "left.txt", "left.star"]
    with open(paths[0], "rb") as f:
        np.testing.assert_array_equal(pickle.load(f), explorer.records.source_rows[chosen])
    np.testing.assert_array_equal(np.loadtxt(paths[1], dtype=int), explorer.records.source_rows[chosen])
    written = starfile.read(paths[2], always_dict=True)["particles"]["rlnImageName"]
    original = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)["particles"]["rlnImageName"]
    assert list(written) == list(original.iloc[explorer.records.source_rows[chosen]])
    with pytest.raises(UserError, match="exists"):
        explorer.save_selection("left", chosen)
    with pytest.raises(UserError, match="name"):
        explorer.save_selection("../escape", chosen)
    with pytest.raises(UserError, match="empty"):
        explorer.save_selection("nothing", [])
    np.testing.assert_array_equal(np.sort(np.concatenate([chosen, explorer.invert(chosen)])),
                                  np.arange(explorer.n_particles))


def _call(app, first_output, inputs, state=()):
    """POST the callback whose outputs begin with `first_output` ("id.property") as the page does; the reply."""
    body = callback_body(app, first_output, inputs, state)
    response = app.server.test_client().post("/_dash-update-component", data=json.dumps(body),
                                             content_type="application/json")
    assert response.status_code == 200, response.data[:500]
    return response.get_json()["response"]


def test_a_click_on_a_particle_gives_the_map_at_its_latent(explorer):
    app = build_app(explorer)
    assert app.server.test_client().get("/").status_code == 200
    particle = int(explorer.shown[7])
    reply = _call(app, "particle.data", [
        {"id": "landscape", "property": "clickData", "value": {"points": [{"curveNumber": 0, "pointIndex": 7}]}},
        {"id": "path-step", "property": "value", "value": 0}, {"id": "threshold", "property": "value", "value": 5},
        {"id": "smoothing", "property": "value", "value": 0}],
        [{"id": "particle", "property": "data", "value": None}, {"id": "path-maps", "property": "data", "value": []},
         {"id": "view", "property": "value", "value": "PCA"}])
    assert reply["particle"]["data"] == particle
    assert reply["surface"]["figure"]["data"][0]["type"] == "mesh3d"
    assert f"particle {particle}" in reply["map-title"]["children"]


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("0.0.0.0", False), ("10.1.2.3", False), ("node12", False)])
def test_only_loopback_addresses_go_without_a_token(host, loopback):
    assert _is_loopback(host) is loopback


def test_the_token_is_required_then_remembered(explorer):
    client = build_app(explorer, token="s3cret").server.test_client()
    assert client.get("/").status_code == 403
    assert client.get("/?token=wrong").status_code == 403
    assert client.get("/_dash-layout").status_code == 403
    assert client.get("/?token=s3cret").status_code == 200
    assert client.get("/_dash-layout").status_code == 200  # the cookie the first visit set


def test_smoothing_makes_a_simpler_surface_and_leaves_the_sections(explorer):
    from hetrec_dist.explore.app import map_figures

    volume = explorer.map_of_particle(2)
    plain, plain_sections, _ = map_figures(explorer, volume, 5)
    smooth, smooth_sections, _ = map_figures(explorer, volume, 5, smoothing_A=8)
    assert 0 < len(smooth.data[0].i) < len(plain.data[0].i)
    np.testing.assert_array_equal(smooth_sections.data[0].z, plain_sections.data[0].z)


def test_the_download_is_the_map_with_its_pixel_size(explorer, tmp_path):
    import mrcfile

    path = tmp_path / "map.mrc"
    path.write_bytes(explorer.mrc(3))
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, explorer.map_of_particle(3))
        assert float(mrc.voxel_size.x) == pytest.approx(explorer.model.pixel_size_A)


def test_a_path_stays_on_the_data_and_saves_as_a_chimerax_series(explorer):
    import mrcfile

    along, on_path = explorer.path(0, 1)
    assert along[0] == 0 and along[-1] == 1 and set(on_path) <= set(along)
    script = explorer.save_path(on_path)
    folder = os.path.dirname(script)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".mrc"))
    assert len(names) == len(on_path) and f"open {' '.join(names)} vseries true" in open(script).read()
    np.testing.assert_array_equal(mrcfile.read(os.path.join(folder, names[-1])), explorer.map_of_particle(1))
    with pytest.raises(UserError, match="two particles"):
        explorer.path(4, 4)


def test_a_taken_port_and_an_unknown_host_are_one_line_errors(two_epoch_run):
    import socket

    from conftest import assert_one_line_error, run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(run_cli("explore", two_epoch_run, "--port", port, expect_ok=False), "in use", "--port")
    assert_one_line_error(run_cli("explore", two_epoch_run, "--host", "no.such.host.invalid", expect_ok=False),
                          "--host")
    # a file that is no checkpoint: one line, without torch's advice to load it with weights_only=False
    result = run_cli("explore", two_epoch_run, "--checkpoint", two_epoch_run / "z.npy", expect_ok=False)
    assert_one_line_error(result, "not a readable checkpoint")
    assert "weights_only" not in result.output


def test_umap_places_of_particles_outside_the_sample_are_their_nearest_sampled_neighbours():
    from hetrec_dist.analysis.latent import places_from_sample

    z = np.random.default_rng(2).normal(size=(500, 4))
    rows = np.sort(np.random.default_rng(3).choice(500, 120, replace=False))
    xy = np.random.default_rng(4).normal(size=(120, 2))
    places = places_from_sample(z, rows, xy)
    nearest = ((z[:, None] - z[rows][None]) ** 2).sum(-1).argmin(1)  # brute force
    np.testing.assert_array_equal(places, xy[nearest])
    np.testing.assert_array_equal(places[rows], xy)


def test_sections_of_a_big_box_are_averaged_down_to_what_the_page_draws():
    from hetrec_dist.explore.session import sections

    volume = np.random.default_rng(5).normal(size=(256, 256, 256)).astype(np.float32)
    cut_z = sections(volume)[0]
    assert cut_z.shape == (128, 128)
    np.testing.assert_allclose(cut_z[3, 5], volume[128, 6:8, 10:12].mean(), rtol=1e-5)


def test_a_run_still_training_is_read_from_its_last_checkpoint_and_says_so(two_epoch_run, tmp_path):
    import shutil
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    os.remove(run / "z.npy")  # training writes it at the end
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hetrec_dist.data.folder_lock import FolderLock; "
        f"lock = FolderLock({str(run)!r}, 'training run').acquire(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        explorer = load_explorer(str(run), out_dir=str(tmp_path / "out"), device="cpu")
    finally:
        holder.kill()
    assert any("still training" in line and f"process {holder.pid}" in line for line in explorer.header)
    expected = np.load(two_epoch_run / "z.npy")
    np.testing.assert_allclose(explorer.z, expected, atol=1e-5)
    assert not os.path.exists(run / "z.npy")  # computed for the page, not written


def test_a_folder_that_cannot_be_written_is_a_line_not_a_traceback(two_epoch_run, tmp_path):
    (tmp_path / "afile").write_text("")  # a file where the folder would go
    explorer = load_explorer(str(two_epoch_run), out_dir=str(tmp_path / "afile" / "sub"), device="cpu")
    with pytest.raises(UserError, match="cannot write in .*--out"):
        explorer.save_selection("x", [1, 2, 3])
    with pytest.raises(UserError, match="cannot write in"):
        explorer.save_path([0, 1])
    from hetrec_dist.cli.explore import _writable  # what the command warns of at start-up

    assert not _writable(str(tmp_path / "afile" / "sub")) and _writable(str(tmp_path / "new" / "sub"))


def test_saved_selections_come_back_links_are_refused_and_names_take_no_extension(explorer, two_epoch_run, tmp_path):
    from hetrec_dist.explore.session import Explorer

    out = tmp_path / "out"
    first = Explorer(explorer.model, explorer.z, explorer.views, explorer.colourings, explorer.records, str(out))
    first.save_selection("kept", np.arange(10, 30))
    again = Explorer(explorer.model, explorer.z, explorer.views, explorer.colourings, explorer.records, str(out))
    np.testing.assert_array_equal(again.selections["kept"], np.arange(10, 30))
    with pytest.raises(UserError, match="without an extension"):
        again.save_selection("end.star", np.arange(3))
    with pytest.raises(UserError, match="no . at either end"):
        again.save_selection("x1.", np.arange(3))
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / "linked")
    planted = Explorer(explorer.model, explorer.z, explorer.views, explorer.colourings, explorer.records,
                       str(tmp_path / "linked"))
    with pytest.raises(UserError, match="symbolic link"):
        planted.save_selection("x", np.arange(3))
    with pytest.raises(UserError, match="symbolic link"):
        planted.save_path([0, 1])
    assert os.listdir(target) == []


def test_a_selection_reconstructs_as_hetrec_reconstruct_does(explorer, sim_store, tmp_path):
    """The page's reconstruction of a selection: the files `hetrec reconstruct --ind` writes for the same
    particles (the same half-sets, drawn from the store's rows), and a one-line refusal of one particle."""
    from conftest import run_cli

    positions = np.arange(0, explorer.n_particles, 2)
    path, result = explorer.reconstruct_selection("evens", positions)
    index = tmp_path / "evens.txt"
    index.write_text("\n".join(str(explorer.records.source_rows[p]) for p in positions))
    run_cli("reconstruct", sim_store, "--ind", index, "-o", tmp_path / "cli", "-q")
    for name in ("map.mrc", "half1.mrc", "half2.mrc"):
        np.testing.assert_allclose(mrcfile.read(os.path.join(os.path.dirname(path), name)),
                                   mrcfile.read(tmp_path / "cli" / name), rtol=1e-5, atol=1e-7)
    assert sum(result.particles) == len(positions)
    with pytest.raises(UserError, match="select more"):
        explorer.reconstruct_selection("one", positions[:1])
