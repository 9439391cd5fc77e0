"""Subsets without copying (issue 28, item 2): `train --ind/--exclude` trains on part of a store; the run
records it, and resume, embed, analyze, select and export use the same particles."""

import os
import pickle

import numpy as np
import pytest
import starfile
import torch
from test_data_parallel import hetrec
from test_inputs import absolute_star, converts

from conftest import assert_one_line_error, free_port, run_bounded, run_cli

from hetrec_dist.data.reader import ChunkShuffledParticles
from hetrec_dist.data.safe_pickle import load as load_pickle
from hetrec_dist.data.store import open_store
from hetrec_dist.train.checkpoint import load_checkpoint

TINY = ["--batch-size", 32, "--zdim", 2, "--n-basis", 2, "--device", "cpu", "-q"]
EXCLUDED = np.arange(0, 300, 3)  # a third of the particles, spread over every chunk


@pytest.fixture(scope="module")
def subset_run(sim_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("subset")
    np.savetxt(root / "junk.txt", EXCLUDED, fmt="%d")
    run_cli("train", sim_store, "-o", root / "run", "--epochs", 1, "--exclude", root / "junk.txt", *TINY)
    return root


def _kept():
    return np.setdiff1d(np.arange(300), EXCLUDED)


def test_index_files_of_every_kind_choose_the_same_particles(sim_store, tmp_path):
    from hetrec_dist.data.subset import subset_rows

    group = open_store(sim_store)
    chosen = np.array([5, 17, 299, 0])
    pickle.dump(chosen, open(tmp_path / "ind.pkl", "wb"))  # cryoDRGN's: a pickled integer array
    np.save(tmp_path / "ind.npy", chosen)
    (tmp_path / "ind.txt").write_text("\ufeff# particles\n5\n17\n299\r\n0\n")  # a BOM, a CRLF
    (tmp_path / "line.txt").write_text("5, 17 299,0\n")
    for name in ("ind.pkl", "ind.npy", "ind.txt", "line.txt"):
        np.testing.assert_array_equal(subset_rows(group, tmp_path / name), [0, 5, 17, 299])
    np.testing.assert_array_equal(subset_rows(group, exclude=tmp_path / "ind.txt"),
                                  np.setdiff1d(np.arange(300), chosen))
    (tmp_path / "one.txt").write_text("17\n")
    np.testing.assert_array_equal(subset_rows(group, tmp_path / "ind.npy", tmp_path / "one.txt"), [0, 5, 299])


@pytest.mark.parametrize("content, fragments", [
    ("1\n2\n300\n", ["index 300", "0 to 299"]),
    ("1\n-1\n", ["index -1"]),
    ("4\n7\n4\n", ["particle 4 more than once"]),
    ("# nothing\n", ["lists no particles"]),
    ("1\n2.5\n", ["2.5", "not a particle index"]),
    ("one\ntwo\n", ["not an index file"]),
    ("0,100\n1,101\n2,102\n", ["line 1 holds 2 numbers", "one index a line"]),  # pandas' to_csv, its index first
    ("1e300\n", ["1e+300", "not a particle index"]),
])
def test_bad_index_files_get_one_line(sim_store, tmp_path, content, fragments):
    (tmp_path / "bad.txt").write_text(content)
    result = run_cli("train", sim_store, "-o", tmp_path / "run", "--ind", tmp_path / "bad.txt", *TINY,
                     expect_ok=False)
    assert_one_line_error(result, "bad.txt", *fragments)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_index_pickles_and_arrays_get_one_line(sim_store, tmp_path):
    np.save(tmp_path / "matrix.npy", np.zeros((3, 3), np.int64))
    pickle.dump({"a": 1}, open(tmp_path / "dict.pkl", "wb"))
    np.save(tmp_path / "everything.npy", np.arange(300))
    for name, fragments in (("matrix.npy", ["shape (3, 3)"]), ("dict.pkl", ["dict.pkl"]),
                            ("everything.npy", ["leave no particle"])):
        option = "--exclude" if name == "everything.npy" else "--ind"
        result = run_cli("train", sim_store, "-o", tmp_path / "run", option, tmp_path / name, *TINY, expect_ok=False)
        assert_one_line_error(result, *fragments)


def test_a_subset_is_read_whole_by_every_number_of_ranks(sim_store):
    rows = _kept()
    for world_size in (1, 2, 3):
        seen = []
        for rank in range(world_size):
            data = ChunkShuffledParticles(sim_store, batch_size=16, rank=rank, world_size=world_size, seed=1,
                                          rows=rows)
            data.set_epoch(1)
            indices = np.concatenate([b["index"].numpy() for b in data])
            assert len(indices) == data.rank_particles()
            seen.append(indices)
        assert max(map(len, seen)) - min(map(len, seen)) <= 1
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), rows)
    batch = next(iter(ChunkShuffledParticles(sim_store, batch_size=300, shuffle=False, rows=rows)))
    reference = open_store(sim_store)
    np.testing.assert_array_equal(batch["images"].numpy(), reference["images"][:][rows])
    np.testing.assert_array_equal(batch["ctf"].numpy(), reference["ctf"][:][rows])


def test_the_run_records_its_subset_and_z_holds_its_particles(subset_run):
    run = subset_run / "run"
    np.testing.assert_array_equal(np.load(run / "particles.npy"), _kept())
    assert np.load(run / "z.npy").shape == (200, 2)
    state = load_checkpoint(str(run / "checkpoints" / "last.pt"))
    assert state["particles"]["n_particles"] == 200
    assert "training on 200 of the store's 300 particles" in (run / "train.log").read_text()


def test_resume_keeps_the_subset_and_refuses_another(subset_run, sim_store, tmp_path):
    run = tmp_path / "run"
    os.system(f"cp -r {subset_run / 'run'} {run}")
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 2, "-q")
    assert np.load(run / "z.npy").shape == (200, 2)
    assert load_checkpoint(str(run / "checkpoints" / "last.pt"))["epoch"] == 2
    (tmp_path / "other.txt").write_text("1\n2\n3\n" * 1 + "\n".join(map(str, range(10, 40))))
    result = run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "--ind", tmp_path / "other.txt",
                     expect_ok=False)
    assert_one_line_error(result, "choose 33 particles", "trained on another 200")
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "--exclude", subset_run / "junk.txt", "-q")
    (run / "particles.npy").unlink()
    result = run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 4, expect_ok=False)
    assert_one_line_error(result, "particles.npy", "missing")


def test_analyze_select_and_embed_of_a_subset_run_name_the_right_input_rows(subset_run, sim_dir, tmp_path):
    run = tmp_path / "run"
    os.system(f"cp -r {subset_run / 'run'} {run}")
    run_cli("analyze", run, "--k", 2, "--no-umap", "--device", "cpu")
    labels = np.load(run / "analyze.2" / "kmeans_labels.npy")
    assert len(labels) == 200
    run_cli("select", run, "--k", 2, "--clusters", 0, "-o", tmp_path / "c0.pkl")
    expected = _kept()[labels == 0]  # the store holds every input row: store rows are input rows
    np.testing.assert_array_equal(load_pickle(str(tmp_path / "c0.pkl")), expected)
    run_cli("select", run, "--k", 2, "--clusters", 0, "-o", tmp_path / "c0.star")
    names = starfile.read(tmp_path / "c0.star", always_dict=True)["particles"]["rlnImageName"]
    original = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)["particles"]["rlnImageName"]
    assert names.tolist() == original.iloc[expected].tolist()
    # the particles the run left out, embedded by its model apart; RUN/z.npy stays the run's own
    run_cli("embed", run, "--ind", subset_run / "junk.txt", "-o", tmp_path / "left_out.npy", "--device", "cpu")
    assert np.load(tmp_path / "left_out.npy").shape == (100, 2)
    result = run_cli("embed", run, "--ind", subset_run / "junk.txt", expect_ok=False)
    assert_one_line_error(result, "z.npy holds the latents of the particles the run trained on", "-o FILE")
    run_cli("embed", run, "-o", tmp_path / "again.npy", "--device", "cpu")
    # another file is the user's: a .npy, replaced only when asked
    assert_one_line_error(run_cli("embed", run, "-o", tmp_path / "again.npy", expect_ok=False), "exists",
                          "--overwrite")
    run_cli("embed", run, "-o", tmp_path / "again.npy", "--overwrite", "--device", "cpu")
    assert_one_line_error(run_cli("embed", run, "-o", tmp_path / "z.txt", expect_ok=False), ".npy")
    assert not (tmp_path / "z.txt").exists()
    np.testing.assert_allclose(np.load(tmp_path / "again.npy"), np.load(run / "z.npy"), rtol=1e-5, atol=1e-6)


def test_a_subset_of_a_partial_store_is_named_by_input_rows(sim_dir, tmp_path):
    """A store of optics group 2 (the odd rows of the input): --ind names input rows; an even row is not in it."""
    import pandas as pd

    def two_groups(tables):
        tables["optics"] = pd.concat([tables["optics"], tables["optics"].assign(rlnOpticsGroup=2)],
                                     ignore_index=True)
        tables["particles"].loc[1::2, "rlnOpticsGroup"] = 2

    store, _ = converts(tmp_path, absolute_star(sim_dir, tmp_path, two_groups), "--optics-group", 2)
    (tmp_path / "ind.txt").write_text("\n".join(map(str, range(1, 300, 4))))
    from hetrec_dist.data.subset import subset_rows

    np.testing.assert_array_equal(subset_rows(store, tmp_path / "ind.txt"), np.arange(0, 150, 2))
    (tmp_path / "even.txt").write_text("1\n4\n")
    result = run_cli("train", tmp_path / "out.zarr", "-o", tmp_path / "run", "--ind", tmp_path / "even.txt", *TINY,
                     expect_ok=False)
    assert_one_line_error(result, "particle 4 of the input is not in the store", "150 of its input's rows")


@pytest.mark.multirank
def test_two_ranks_train_on_the_same_subset_as_one(subset_run, sim_store, tmp_path):
    run = tmp_path / "two"
    result = run_bounded(hetrec("launch", "--launcher", "deepspeed", "--master-port", free_port(), "--procs-per-node",
                                2, "--", "train", sim_store, "-o", run, "--epochs", 1, "--exclude",
                                subset_run / "junk.txt", "--batch-size", 16, "--zdim", 2, "--n-basis", 2, "-q"))
    assert result.returncode == 0, result.stdout + result.stderr
    np.testing.assert_array_equal(np.load(run / "particles.npy"), np.load(subset_run / "run" / "particles.npy"))
    two, one = (load_checkpoint(str(r / "checkpoints" / "last.pt")) for r in (run, subset_run / "run"))
    assert two["particles"] == one["particles"]
    z = np.load(run / "z.npy")  # both ranks' shares, in store order: as one process embeds the subset
    assert z.shape == (200, 2)
    run_cli("embed", run, "-o", tmp_path / "one_process.npy", "--device", "cpu")
    np.testing.assert_allclose(np.load(tmp_path / "one_process.npy"), z, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(two["model"]["basis"]).all()


def _subset_rank_worker(rank, port, store_path, run_root, exclude):
    from test_data_parallel import RANK_BATCH, FixedBatches, batches_of, rank_environment, tiny_config

    from hetrec_dist.distributed.training_world import init_training_world
    from hetrec_dist.train.trainer import Trainer

    os.environ.update(rank_environment(rank, 2, port), LOCAL_SIZE="2")
    world = init_training_world(timeout_s=120)
    trainer = Trainer(store_path, os.path.join(run_root, "two"), tiny_config(RANK_BATCH, "union", True), world,
                      show_progress=False, data=FixedBatches(batches_of(store_path, rank)), exclude=exclude)
    trainer.train_epoch()
    parameters = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    world.close()
    return parameters, trainer.state_dict()["half_sets"], trainer.state_dict()["particles"]


@pytest.mark.multirank
def test_two_ranks_on_a_subset_take_the_steps_of_one_rank(sim_store, tmp_path):
    """The same global batches (inside the subset) on 2 ranks and on 1: the subset's half-sets, chosen on each
    rank, and so every parameter after the steps are one rank's."""
    from test_data_parallel import RANK_BATCH, FixedBatches, batches_of, tiny_config

    from conftest import run_ranks

    from hetrec_dist.train.trainer import Trainer

    exclude = tmp_path / "exclude.txt"
    exclude.write_text("\n".join(map(str, range(40, 100))))  # none of the fixed batches' particles
    ranks = run_ranks(_subset_rank_worker, free_port(), sim_store, str(tmp_path), str(exclude), out_dir=tmp_path)
    one = Trainer(sim_store, tmp_path / "one", tiny_config(2 * RANK_BATCH, "union", True), show_progress=False,
                  data=FixedBatches(batches_of(sim_store)), exclude=str(exclude))
    one.train_epoch()
    for parameters, half_sets, record in ranks:
        assert record == one.state_dict()["particles"] and record["n_particles"] == 240
        assert torch.equal(half_sets, one.state_dict()["half_sets"])
        for name, value in one.model.state_dict().items():
            torch.testing.assert_close(parameters[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_store_of_the_inputs_first_rows_refuses_a_later_row_as_not_in_it(sim_dir, tmp_path):
    """Optics group 1 is the first 150 rows: the store's rows look like a whole input, but row 200 of the input
    is a particle the store does not hold, not an index past the input."""
    import pandas as pd

    from hetrec_dist.data.subset import subset_rows
    from hetrec_dist.errors import UserError

    def first_half(tables):
        tables["optics"] = pd.concat([tables["optics"], tables["optics"].assign(rlnOpticsGroup=2)],
                                     ignore_index=True)
        tables["particles"].loc[150:, "rlnOpticsGroup"] = 2

    store, _ = converts(tmp_path, absolute_star(sim_dir, tmp_path, first_half), "--optics-group", 1)
    (tmp_path / "late.txt").write_text("3\n200\n")
    with pytest.raises(UserError, match="particle 200 of the input is not in the store"):
        subset_rows(store, tmp_path / "late.txt")


def test_a_damaged_particles_file_gets_one_line(subset_run, sim_store, tmp_path):
    run = tmp_path / "run"
    os.system(f"cp -r {subset_run / 'run'} {run}")
    np.save(run / "particles.npy", np.load(run / "particles.npy").astype(float))  # the right values, as floats
    for command in (("train", sim_store, "-o", run, "--resume", "--epochs", 2, "-q"),
                    ("embed", run, "-o", tmp_path / "z.npy", "--device", "cpu")):
        assert_one_line_error(run_cli(*command, expect_ok=False), "particles.npy", "not the subset")
    (run / "particles.npy").write_bytes(b"")
    assert_one_line_error(run_cli("embed", run, "-o", tmp_path / "z.npy", expect_ok=False), "particles.npy",
                          "missing or unreadable")
