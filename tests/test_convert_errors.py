"""Every bad input gets a one-line error naming the file and the problem, and leaves no complete store."""

import os
import pickle

import mrcfile
import numpy as np
import pytest
import starfile
import zarr

from conftest import assert_one_line_error, run_cli

from hetrec_dist.data.reader import ChunkShuffledParticles, ParticleStore
from hetrec_dist.errors import UserError


@pytest.fixture
def star_tables(sim_dir):
    tables = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)
    particles = tables["particles"].head(40).copy()
    particles["rlnImageName"] = [f"{i}@{os.path.join(sim_dir, p)}" for i, p in
                                 particles["rlnImageName"].str.split("@").tolist()]
    return {"optics": tables["optics"], "particles": particles}


def convert_fails(tmp_path, input_path, *fragments, extra=()):
    out = tmp_path / "out.zarr"
    result = run_cli("convert", input_path, "-o", out, "-q", *extra, expect_ok=False)
    assert_one_line_error(result, *fragments)
    assert not out.exists() or not zarr.open_group(out, mode="r").attrs["complete"]
    return result


def write_star(tables, path):
    starfile.write(tables, path)
    return path


def test_missing_input(tmp_path):
    convert_fails(tmp_path, tmp_path / "nothing.star", "nothing.star", "no such file")


def test_missing_stack(star_tables, tmp_path):
    star_tables["particles"].loc[3, "rlnImageName"] = "1@missing_stack.mrcs"
    convert_fails(tmp_path, write_star(star_tables, tmp_path / "p.star"), "missing_stack.mrcs", "not found")


def test_index_out_of_range(star_tables, tmp_path):
    name = star_tables["particles"].loc[0, "rlnImageName"].split("@")[1]
    star_tables["particles"].loc[5, "rlnImageName"] = f"999@{name}"
    convert_fails(tmp_path, write_star(star_tables, tmp_path / "p.star"), "particles_0000.mrcs", "999", "out of range")


@pytest.mark.parametrize("column,what", [("rlnAngleTilt", "pose"), ("rlnDefocusU", "CTF")])
def test_star_without_pose_or_ctf_columns(star_tables, tmp_path, column, what):
    star_tables["particles"] = star_tables["particles"].drop(columns=column)
    convert_fails(tmp_path, write_star(star_tables, tmp_path / "p.star"), "p.star", f"no {what} columns", column)


def test_unreadable_star(tmp_path):
    (tmp_path / "bad.star").write_text("this is not a star file\n")
    convert_fails(tmp_path, tmp_path / "bad.star", "bad.star")


@pytest.mark.filterwarnings("ignore:Data array contains NaN")  # the stack is meant to
def test_nan_pixels(star_tables, tmp_path):
    images = np.ones((4, 32, 32), dtype=np.float32)
    images[2, 5, 7] = np.nan
    mrcfile.write(tmp_path / "nan.mrcs", images)
    star_tables["particles"] = star_tables["particles"].head(4).assign(
        rlnImageName=[f"{i}@{tmp_path / 'nan.mrcs'}" for i in range(1, 5)])
    convert_fails(tmp_path, write_star(star_tables, tmp_path / "p.star"), "nan.mrcs", "image 3", "NaN")


def test_non_square_images(star_tables, tmp_path):
    mrcfile.write(tmp_path / "rect.mrcs", np.zeros((4, 30, 32), dtype=np.float32))
    star_tables["particles"] = star_tables["particles"].head(4).assign(
        rlnImageName=[f"{i}@{tmp_path / 'rect.mrcs'}" for i in range(1, 5)])
    convert_fails(tmp_path, write_star(star_tables, tmp_path / "p.star"), "rect.mrcs", "not square")


def test_not_an_mrc_stack(star_tables, tmp_path):
    (tmp_path / "junk.mrcs").write_bytes(b"\0" * 100)
    star_tables["particles"] = star_tables["particles"].head(2).assign(
        rlnImageName=[f"{i}@{tmp_path / 'junk.mrcs'}" for i in range(1, 3)])
    convert_fails(tmp_path, write_star(star_tables, tmp_path / "p.star"), "junk.mrcs", "not a readable MRC stack")


def test_pkl_counts_that_disagree_with_the_stacks(sim_dir, tmp_path):
    stack = os.path.join(sim_dir, "stacks", "particles_0000.mrcs")  # 128 images
    pickle.dump((np.tile(np.eye(3), (100, 1, 1)), np.zeros((100, 2))), open(tmp_path / "poses.pkl", "wb"))
    pickle.dump(np.zeros((128, 9)), open(tmp_path / "ctf.pkl", "wb"))
    convert_fails(tmp_path, stack, "poses.pkl", "(100, 3, 3)", "128 images",
                  extra=("--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl"))
    pickle.dump(np.zeros((7, 9)), open(tmp_path / "ctf7.pkl", "wb"))
    convert_fails(tmp_path, stack, "ctf7.pkl", "128 images",
                  extra=("--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf7.pkl"))
    convert_fails(tmp_path, stack, "--poses")


def test_cs_without_the_needed_fields(tmp_path):
    records = np.zeros(3, dtype=[("uid", "<u8"), ("blob/path", "S8"), ("blob/idx", "<u4")])
    with open(tmp_path / "p.cs", "wb") as f:
        np.save(f, records)
    convert_fails(tmp_path, tmp_path / "p.cs", "p.cs", "alignments3D/pose", "ctf/df1_A")


def test_an_existing_output_needs_overwrite(sim_dir, tmp_path):
    star = os.path.join(sim_dir, "particles.star")
    run_cli("convert", star, "-o", tmp_path / "out.zarr", "-q")
    before = (tmp_path / "out.zarr" / "zarr.json").read_bytes()
    result = run_cli("convert", star, "-o", tmp_path / "out.zarr", "--box", 16, expect_ok=False)
    assert_one_line_error(result, "out.zarr", "already exists", "--overwrite")
    assert (tmp_path / "out.zarr" / "zarr.json").read_bytes() == before
    run_cli("convert", star, "-o", tmp_path / "out.zarr", "--overwrite", "-q")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "precious.txt").write_text("keep me")
    result = run_cli("convert", star, "-o", tmp_path / "folder", "--overwrite", expect_ok=False)
    assert_one_line_error(result, "not a particle store")
    assert (tmp_path / "folder" / "precious.txt").exists()


def test_bad_box(sim_dir, tmp_path):
    convert_fails(tmp_path, os.path.join(sim_dir, "particles.star"), "--box 48", extra=("--box", 48))


def test_readers_refuse_incomplete_or_unknown_stores(sim_dir, tmp_path):
    store = tmp_path / "p.zarr"
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", store, "-q")
    group = zarr.open_group(store, mode="r+")
    group.attrs["complete"] = False
    for read in (ParticleStore, lambda p: ChunkShuffledParticles(p, batch_size=8)):
        with pytest.raises(UserError, match="did not finish"):
            read(str(store))
    assert_one_line_error(run_cli("inspect", tmp_path / "nowhere", expect_ok=False), "nowhere", "not a particle store")
    group.attrs.update({"complete": True, "format_version": 99})
    with pytest.raises(UserError, match="version 99 is not supported"):
        ParticleStore(str(store))
