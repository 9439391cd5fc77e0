"""What hetrec writes about particles refers to them as the input does (issue 30, item 6): index files hold the
input's rows, subsets and exported poses are the input's rows, whatever part of the input was converted; and
half-sets keep every copy of one image in one half, as the input's own half-sets must."""

import os

import numpy as np
import pandas as pd
import pytest
import starfile
from numpy.lib import recfunctions
from test_inputs import absolute_star, converts, split_cryosparc

from conftest import assert_one_line_error, run_cli
from test_convert import write_cryosparc

from hetrec_dist.analysis.select import write_subset
from hetrec_dist.data.half_sets import choose_half_sets
from hetrec_dist.data.safe_pickle import load as load_pickle
from hetrec_dist.errors import UserError


def _two_optics_groups(tables):
    tables["optics"] = pd.concat([tables["optics"], tables["optics"].assign(rlnOpticsGroup=2)], ignore_index=True)
    tables["particles"].loc[1::2, "rlnOpticsGroup"] = 2


def _stored_image_names(store):
    """'index@stack' (1-based, RELION's form) of each stored particle, from the store's own record of its image."""
    stacks = [source["path"] for source in store.attrs["sources"]["stacks"]]
    return [f"{i + 1}@{stacks[s]}" for s, i in zip(store["source_stack"][:], store["source_index"][:])]


def _image(name):
    index, stack = name.split("@")
    return int(index), os.path.realpath(stack)


def test_index_files_and_subsets_of_a_partial_store_hold_the_inputs_rows(sim_dir, tmp_path):
    star = absolute_star(sim_dir, tmp_path, _two_optics_groups)
    store, _ = converts(tmp_path, star, "--optics-group", 2)
    chosen = np.array([0, 2, 7])
    names = np.array(_stored_image_names(store))[chosen]
    input_names = starfile.read(star, always_dict=True)["particles"]["rlnImageName"].to_numpy()
    attrs, source_rows = store.attrs.asdict(), store["source_row"][:]

    write_subset(chosen, attrs, source_rows, str(tmp_path / "ind.pkl"))
    rows = load_pickle(str(tmp_path / "ind.pkl"))
    np.testing.assert_array_equal(rows, [1, 5, 15])  # cryoDRGN's --ind on the same STAR picks these particles
    assert [_image(n) for n in input_names[rows]] == [_image(n) for n in names]
    write_subset(chosen, attrs, source_rows, str(tmp_path / "subset.star"))
    subset = starfile.read(tmp_path / "subset.star", always_dict=True)["particles"]
    assert subset["rlnImageName"].tolist() == input_names[rows].tolist()


def test_a_cs_subset_of_a_split_job_holds_the_main_files_rows(sim_dir, tmp_path):
    records = split_cryosparc(sim_dir, tmp_path / "J9")  # the passthrough's rows come in another order
    main = np.load(tmp_path / "J9" / "J9_particles.cs")
    passthrough = np.load(tmp_path / "J9" / "J9_passthrough_particles.cs")
    passthrough["ctf/exp_group_id"] = np.where(passthrough["uid"] % 2 == 1, 2, 1)
    np.save(open(tmp_path / "J9" / "J9_passthrough_particles.cs", "wb"), passthrough)
    store, _ = converts(tmp_path, tmp_path / "J9" / "J9_particles.cs", "--datadir", sim_dir, "--optics-group", 2)
    in_group = np.flatnonzero(main["uid"] % 2 == 1)
    np.testing.assert_array_equal(store["source_row"][:], in_group)
    chosen = np.array([1, 4])
    write_subset(chosen, store.attrs.asdict(), store["source_row"][:], str(tmp_path / "ind.pkl"))
    np.testing.assert_array_equal(load_pickle(str(tmp_path / "ind.pkl")), in_group[chosen])
    write_subset(chosen, store.attrs.asdict(), store["source_row"][:], str(tmp_path / "subset.cs"))
    subset = np.load(tmp_path / "subset.cs")
    np.testing.assert_array_equal(subset["uid"], main["uid"][in_group[chosen]])
    by_uid = {uid: row for row, uid in enumerate(records["uid"])}
    np.testing.assert_array_equal(subset["blob/idx"], records["blob/idx"][[by_uid[u] for u in subset["uid"]]])


def test_export_of_a_partial_store_writes_the_inputs_rows_and_refuses_a_poses_pkl(sim_dir, tmp_path):
    star = absolute_star(sim_dir, tmp_path, _two_optics_groups)
    store, _ = converts(tmp_path, star, "--optics-group", 2)
    run = tmp_path / "run"
    run_cli("train", tmp_path / "out.zarr", "-o", run, "--epochs", 1, "--refine-poses", "--pose-warmup", 0,
            "--batch-size", 50, "--zdim", 2, "--n-basis", 2, "--device", "cpu", "-q")
    result = run_cli("export", run, "-o", tmp_path / "poses.pkl", expect_ok=False)
    assert_one_line_error(result, "--optics-group 2", "would not line up", "write a .star file")
    run_cli("export", run, "-o", tmp_path / "refined.star")
    refined = starfile.read(tmp_path / "refined.star", always_dict=True)["particles"]
    original = starfile.read(star, always_dict=True)["particles"]
    assert refined["rlnImageName"].tolist() == original["rlnImageName"].iloc[1::2].tolist()
    assert refined["rlnOpticsGroup"].eq(2).all()


def _symmetry_expanded(tables, copies=3):
    """Each particle listed `copies` times with psi turned by 360/copies degrees, as relion_particle_symmetry_expand
    writes a C3 expansion: one image, several poses."""
    particles = tables["particles"]
    expanded = pd.concat([particles.assign(rlnAnglePsi=particles["rlnAnglePsi"] + 360.0 * c / copies)
                          for c in range(copies)], ignore_index=True)
    tables["particles"] = expanded.sort_values("rlnImageName", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_random_split_keeps_the_copies_of_one_image_in_one_half(sim_dir, tmp_path, seed):
    star = absolute_star(sim_dir, tmp_path, _symmetry_expanded)
    store, _ = converts(tmp_path, star)
    values, source = choose_half_sets(store, seed)
    assert "at random" in source
    names = np.array(_stored_image_names(store))
    for name in np.unique(names):
        assert len(set(values[names == name])) == 1, name
    counts = np.bincount(values, minlength=3)[1:]
    assert counts.sum() == 900 and abs(counts[0] - counts[1]) <= 3, counts


def test_input_half_sets_that_split_one_image_are_refused_naming_its_rows(sim_dir, tmp_path):
    def halves_per_row(tables):
        _symmetry_expanded(tables)
        tables["particles"]["rlnRandomSubset"] = np.repeat(np.arange(300) % 2 + 1, 3)
        tables["particles"].loc[4, "rlnRandomSubset"] = 3 - tables["particles"].loc[4, "rlnRandomSubset"]

    store, _ = converts(tmp_path, absolute_star(sim_dir, tmp_path, halves_per_row))
    with pytest.raises(UserError, match=r"one image in both half-sets \(rows 4, 5, 6\)"):
        choose_half_sets(store, 0)


def test_the_random_split_of_distinct_images_is_unchanged(tmp_path):
    """Runs split before images were grouped keep their halves: with no repeated image the split is the
    permutation's first ceil(N/2) particles, as it always was."""
    from hetrec_dist.data.half_sets import random_half_sets

    for n, seed in ((300, 0), (301, 7)):
        expected = np.full(n, 2, np.int8)
        expected[np.random.default_rng(seed).permutation(n)[:(n + 1) // 2]] = 1
        np.testing.assert_array_equal(random_half_sets(n, seed), expected)


def test_cryosparc_split_and_relion_subset_name_the_same_halves(sim_dir, tmp_path):
    """alignments3D/split 0 is rlnRandomSubset 1, as csparc2star writes it (split + 1)."""
    split = (np.arange(300) * 7 % 3 == 0).astype(np.uint32)
    records = write_cryosparc(sim_dir, tmp_path / "p.cs")
    records = recfunctions.append_fields(records, "alignments3D/split", split, usemask=False)
    np.save(open(tmp_path / "p.cs", "wb"), records)
    cs_store, _ = converts(tmp_path, tmp_path / "p.cs", "--datadir", sim_dir, name="cs.zarr")

    def subsets(tables):
        tables["particles"]["rlnRandomSubset"] = split + 1
    star_store, _ = converts(tmp_path, absolute_star(sim_dir, tmp_path, subsets), name="star.zarr")
    np.testing.assert_array_equal(cs_store["half_set"][:], star_store["half_set"][:])
