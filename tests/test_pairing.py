"""Results are never paired with the wrong particles (issue 31, part 3): a store's identity is its content
(data.store.content_sha256), recorded by every run and checked by every command that pairs a run with
particles, whatever the path, count or box; latents and their record always come from one write."""

import json
import os
import shutil

import numpy as np
import pytest
import starfile

from conftest import assert_one_line_error, run_cli

from hetrec_dist.data.store import compute_content_sha256, content_sha256, open_store

TINY = ["--batch-size", 64, "--zdim", 2, "--n-basis", 3, "--device", "cpu", "-q"]


def shuffled_star(sim_dir, path, seed=0):
    """The simulation's STAR file with its particle rows in another order (stack paths made absolute)."""
    tables = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)
    particles = tables["particles"]
    particles["rlnImageName"] = [f"{i}@{os.path.join(sim_dir, p)}" for i, p in
                                 particles["rlnImageName"].str.split("@").tolist()]
    order = np.random.default_rng(seed).permutation(len(particles))
    starfile.write({"optics": tables["optics"], "particles": particles.iloc[order].reset_index(drop=True)}, path)
    return path


@pytest.fixture(scope="module")
def analysed_run(sim_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("pairing") / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 1, *TINY)
    run_cli("analyze", run, "--k", 3, "--no-umap", "--device", "cpu")
    return run


@pytest.fixture
def rebuilt_in_another_order(analysed_run, sim_dir, sim_store, tmp_path):
    """A copy of the run whose store (config.yaml's path) was converted again, `--overwrite`, from the same
    particles in another order."""
    run, store = tmp_path / "run", tmp_path / "particles.zarr"
    shutil.copytree(analysed_run, run)
    shutil.copytree(sim_store, store)
    config = (run / "config.yaml").read_text().replace(f"store: {sim_store}", f"store: {store}")
    (run / "config.yaml").write_text(config)
    run_cli("convert", shuffled_star(sim_dir, tmp_path / "shuffled.star"), "-o", store, "--overwrite", "-q")
    return run, store


def test_the_identity_is_the_content_not_the_path_or_chunking(sim_dir, sim_store, tmp_path):
    recorded = content_sha256(open_store(sim_store))
    assert recorded == compute_content_sha256(open_store(sim_store))
    shutil.copytree(sim_store, tmp_path / "moved.zarr")
    assert content_sha256(open_store(str(tmp_path / "moved.zarr"))) == recorded
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", tmp_path / "rechunked.zarr",
            "--chunk-images", 50, "-q")
    assert content_sha256(open_store(str(tmp_path / "rechunked.zarr"))) == recorded
    run_cli("convert", shuffled_star(sim_dir, tmp_path / "shuffled.star"), "-o", tmp_path / "shuffled.zarr", "-q")
    assert content_sha256(open_store(str(tmp_path / "shuffled.zarr"))) != recorded


def test_every_command_refuses_a_store_rebuilt_in_another_order(rebuilt_in_another_order, sim_dir, sim_store,
                                                                 tmp_path):
    run, store = rebuilt_in_another_order
    (tmp_path / "z.txt").write_text("0 0\n")
    for command in (("select", run, "--clusters", "0", "--k", 3, "-o", tmp_path / "subset.star"),
                    ("eval", run, "--gt", os.path.join(sim_dir, "ground_truth")),
                    ("embed", run),
                    ("train", store, "-o", run, "--resume", "--epochs", 2, "-q")):
        result = run_cli(*command, expect_ok=False)
        assert_one_line_error(result, str(store), "holds other particles than the run")
    assert not (tmp_path / "subset.star").exists()
    # the same particles moved elsewhere are the run's own: --store names them
    run_cli("select", run, "--clusters", "0", "--k", 3, "-o", tmp_path / "subset.star", "--store", sim_store)
    assert (tmp_path / "subset.star").exists()
    run_cli("embed", run, "--store", store, "-o", tmp_path / "other_z.npy", "--device", "cpu")  # latents elsewhere


def test_embed_of_another_store_never_replaces_the_runs_latents(analysed_run, sim_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(analysed_run, run)
    other = tmp_path / "other.zarr"
    run_cli("convert", shuffled_star(sim_dir, tmp_path / "shuffled.star"), "-o", other, "-q")
    before = (run / "z.npy").read_bytes()
    result = run_cli("embed", run, "--store", other, expect_ok=False)
    assert_one_line_error(result, "holds other particles", "-o FILE")
    assert (run / "z.npy").read_bytes() == before
    result = run_cli("embed", run, "--store", other, "-o", run / "z.npy", expect_ok=False)
    assert_one_line_error(result, "holds other particles")


def test_latents_and_their_record_of_two_writes_are_refused(analysed_run, tmp_path):
    """A kill between z.json and z.npy (save_latents writes them in that order) leaves a new record beside old
    latents: the record names its latents' content, so the pair is refused."""
    run = tmp_path / "run"
    shutil.copytree(analysed_run, run)
    z = np.load(run / "z.npy")
    np.save(run / "z.npy", z + 1)  # the other write's latents
    for command in (("analyze", run, "--k", 3, "--no-umap"), ("select", run, "--clusters", 0, "--k", 3, "-o",
                                                               tmp_path / "s.star")):
        assert_one_line_error(run_cli(*command, expect_ok=False), "two different writes", "hetrec embed")


def test_another_runs_checkpoint_of_the_same_epoch_is_not_paired_with_these_latents(analysed_run, sim_dir,
                                                                                    sim_store, tmp_path):
    other = tmp_path / "other"
    run_cli("train", sim_store, "-o", other, "--epochs", 1, "--seed", 5, *TINY)
    result = run_cli("eval", analysed_run, "--gt", os.path.join(sim_dir, "ground_truth"),
                     "--checkpoint", other / "checkpoints" / "last.pt", expect_ok=False)
    assert_one_line_error(result, "latents of another run")


def test_select_refuses_clusters_of_older_latents(analysed_run, sim_store, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(analysed_run, run)
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 2, "-q")  # writes z.npy of epoch 2
    result = run_cli("select", run, "--clusters", 0, "--k", 3, "-o", tmp_path / "s.star", expect_ok=False)
    assert_one_line_error(result, "analyze.3 clusters the latents of epoch 1", "epoch 2", "hetrec analyze")
    summary = json.loads((run / "analyze.3" / "summary.json").read_text())
    assert summary["latents"]["epoch"] == 1


@pytest.mark.parametrize("damage", ["record removed", "rows cut, record removed", "object array", "NaN row",
                                    "other zdim"])
def test_latents_that_cannot_be_this_runs_are_one_line(analysed_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(analysed_run, run)
    z = np.load(run / "z.npy")
    if damage == "rows cut, record removed":
        np.save(run / "z.npy", z[:-1])
    elif damage == "object array":
        np.save(run / "z.npy", np.array([object()] * len(z), dtype=object), allow_pickle=True)
    elif damage == "NaN row":
        z[3] = np.nan
        np.save(run / "z.npy", z)
    elif damage == "other zdim":
        np.save(run / "z.npy", np.zeros((len(z), 5), np.float32))
    if "record removed" in damage:
        (run / "z.json").unlink()
    for command in (("analyze", run, "--k", 3, "--no-umap"), ("select", run, "--clusters", 0, "--k", 3, "-o",
                                                               tmp_path / "s.star")):
        assert_one_line_error(run_cli(*command, expect_ok=False), "z.npy", "hetrec embed")
    assert not (tmp_path / "s.star").exists()


def test_analyze_refuses_another_stores_particles_and_takes_a_moved_one(rebuilt_in_another_order, sim_store):
    run, store = rebuilt_in_another_order
    result = run_cli("analyze", run, "--k", 3, "--no-umap", "--device", "cpu", expect_ok=False)
    assert_one_line_error(result, "holds other particles than the run", "--store")
    result = run_cli("analyze", run, "--k", 3, "--no-umap", "--device", "cpu", "--store", sim_store)
    assert "Warning" not in result.output


def test_embed_writes_the_runs_own_latents_only_with_its_own_model(analysed_run, sim_store, tmp_path):
    other = tmp_path / "other"
    run_cli("train", sim_store, "-o", other, "--epochs", 1, "--seed", 3, *TINY)
    run = tmp_path / "run"
    shutil.copytree(analysed_run, run)
    before = (run / "z.npy").read_bytes()
    result = run_cli("embed", run, "--checkpoint", other / "checkpoints" / "last.pt", expect_ok=False)
    assert_one_line_error(result, "a checkpoint of another run", "-o FILE")
    assert (run / "z.npy").read_bytes() == before
    run_cli("embed", run, "--checkpoint", other / "checkpoints" / "last.pt", "-o", tmp_path / "z.npy")
