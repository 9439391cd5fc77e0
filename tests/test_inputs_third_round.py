"""Inputs, third round (issue 30): every MRC header layout that holds N images of D x D, RELION's type suffix on
stack names, and tomography files named as such. Each input is built here from the simulated dataset; the
right values are the reference store's (the simulator's STAR file converted)."""

import os

import mrcfile
import numpy as np
import pandas as pd
import pytest
from test_inputs import absolute_star, converts

from test_convert_errors import convert_fails

from hetrec_dist.data.store import content_sha256, open_store


def _stacks_rewritten(sim_dir, tmp_path, write):
    """The simulation's STAR naming copies of its stacks that write(path, images) made."""
    def edit(tables):
        names = tables["particles"]["rlnImageName"].str.split("@")
        rewritten = {}
        for stack in sorted({name for _, name in names}):
            copy = str(tmp_path / os.path.basename(stack))
            write(copy, mrcfile.read(stack))
            rewritten[stack] = copy
        tables["particles"]["rlnImageName"] = [f"{i}@{rewritten[name]}" for i, name in names]
    return absolute_star(sim_dir, tmp_path, edit)


@pytest.mark.parametrize("layout", ["volume stack of single sections", "volume", "one image a file"])
def test_every_header_layout_of_n_images_converts_to_the_same_store(sim_dir, sim_store, tmp_path, layout):
    if layout == "one image a file":  # a stack of one image is written as a 2-D image
        def edit(tables):
            names = tables["particles"]["rlnImageName"].str.split("@")
            singles = []
            for row, (index, stack) in enumerate(names):
                path = tmp_path / f"image_{row:04d}.mrc"
                mrcfile.write(path, mrcfile.mmap(stack, mode="r").data[int(index) - 1], voxel_size=4.0)
                singles.append(f"1@{path}")
            tables["particles"]["rlnImageName"] = singles
        star = absolute_star(sim_dir, tmp_path, edit)
    else:
        def write(path, images):
            with mrcfile.new(path) as mrc:
                mrc.set_data(images[:, np.newaxis] if layout.startswith("volume stack") else images)
                if layout == "volume":
                    mrc.set_volume()
                mrc.voxel_size = 4.0
        star = _stacks_rewritten(sim_dir, tmp_path, write)
        header = mrcfile.open(next(tmp_path.glob("*.mrcs")), header_only=True).header
        assert int(header.ispg) == (401 if layout.startswith("volume stack") else 1)
    store, _ = converts(tmp_path, star)
    reference = open_store(sim_store)
    np.testing.assert_array_equal(store["images"][:], reference["images"][:])


def test_a_stack_of_thick_volumes_is_refused_naming_its_shape(sim_dir, tmp_path):
    def write(path, images):
        with mrcfile.new(path) as mrc:
            mrc.set_data(images[: len(images) // 2 * 2].reshape(-1, 2, *images.shape[1:]))
    convert_fails(tmp_path, _stacks_rewritten(sim_dir, tmp_path, write), "volumes of 2 x 32 x 32 voxels",
                  "not particle images")


def test_relion_type_suffixes_on_stack_names(sim_dir, sim_store, tmp_path):
    def mrc_with_suffix(tables):
        names = tables["particles"]["rlnImageName"].str.split("@")
        for stack in {name for _, name in names}:
            os.symlink(stack, tmp_path / os.path.basename(stack).replace(".mrcs", ".mrc"))
        tables["particles"]["rlnImageName"] = [
            f"{i}@{tmp_path / os.path.basename(name).replace('.mrcs', '.mrc')}:mrcs" for i, name in names]

    run_star = absolute_star(sim_dir, tmp_path, mrc_with_suffix)
    store, _ = converts(tmp_path, run_star)
    reference = open_store(sim_store)
    np.testing.assert_array_equal(store["images"][:], reference["images"][:])
    assert content_sha256(store) == content_sha256(reference)  # the same particles, poses and CTFs

    def spider(tables):
        tables["particles"]["rlnImageName"] = tables["particles"]["rlnImageName"] + ":spi"

    (tmp_path / "spider").mkdir()
    convert_fails(tmp_path / "spider", absolute_star(sim_dir, tmp_path, spider, name="s.star"), ":spi'",
                  "a file type hetrec does not read", "NAME.mrc:mrcs")


@pytest.mark.parametrize("kind", ["sub-tomogram particles", "premultiplied"])
def test_tomography_and_premultiplied_inputs_say_so_before_anything_else(sim_dir, tmp_path, kind):
    def edit(tables):
        particles = tables["particles"]
        if kind == "premultiplied":
            tables["optics"]["rlnCtfDataAreCtfPremultiplied"] = 1
            del particles["rlnDefocusU"]  # would be refused too, later
            return
        # RELION 5's particles of a tomography project: named by tomogram, no image names, no optics' box
        particles["rlnTomoName"] = "TS_01"
        particles["rlnTomoParticleName"] = [f"TS_01/{i}" for i in range(len(particles))]
        del particles["rlnImageName"], tables["optics"]["rlnImageSize"]

    fragments = (("RELION tomography file", "rlnTomoName", "not supported") if kind != "premultiplied"
                 else ("CTF-premultiplied",))
    convert_fails(tmp_path, absolute_star(sim_dir, tmp_path, edit), *fragments)


def test_optics_groups_that_differ_in_box_and_pixel_size_are_refused_naming_both(sim_dir, tmp_path):
    def two_groups(tables):
        second = tables["optics"].assign(rlnOpticsGroup=2, rlnImagePixelSize=2.0, rlnImageSize=64)
        tables["optics"] = pd.concat([tables["optics"], second], ignore_index=True)
        tables["particles"].loc[1::2, "rlnOpticsGroup"] = 2

    convert_fails(tmp_path, absolute_star(sim_dir, tmp_path, two_groups), "rlnImagePixelSize differs",
                  "group 1: 4 (box 32)", "group 2: 2 (box 64)", "--optics-group N")
