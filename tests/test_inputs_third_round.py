"""Inputs, third round (issue 30): every MRC header layout that holds N images of D x D, RELION's type suffix on
stack names, tomography files named as such, and RELION's CTF scale and B-factor carried into the model. Each
input is built here from the simulated dataset; the right values are the reference store's (the simulator's STAR
file converted) or RELION's formulas written out here."""

import json
import os
import shutil

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
from test_inputs import absolute_star, converts

from test_convert_errors import convert_fails

from hetrec_dist.data.reader import ParticleStore
from hetrec_dist.data.store import content_sha256, open_store
from hetrec_dist.errors import UserError
from hetrec_dist.model.hetvae import HetVAE, ModelShape
from hetrec_dist.physics.ctf import ctf_2d


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


# CTF scale and B-factor (issue 30, item 3) ------------------------------------------------------------------

def relion_ctf(fx, fy, du, dv, angle_deg, kv, cs_mm, q0, phase_deg, scale, bfactor):
    """RELION's CTF::getCTF, written out from its constants (ctf.cpp: K1 = pi lambda, K2 = pi/2 Cs lambda^3,
    K3 = atan(Q0 / sqrt(1 - Q0^2)), K4 = -Bfac / 4, K5 = phase shift), with its own defocus sign convention.
    The wavelength's constant is CODATA's 12.26426 Å V^0.5, as hetrec's; RELION's 12.2643247 differs in the
    sixth digit, which moves the phase by up to 1e-3 rad at 2.5 Å and 1.6 µm defocus."""
    lam = 12.2642598 / np.sqrt(kv * 1e3 * (1 + kv * 1e3 * 0.978466e-6))
    u2 = fx ** 2 + fy ** 2
    ellipse = np.arctan2(fy, fx) - np.radians(angle_deg)
    defocus = -(du + dv) / 2 - (du - dv) / 2 * np.cos(2 * ellipse)
    argument = np.pi * lam * defocus * u2 + np.pi / 2 * cs_mm * 1e7 * lam ** 3 * u2 ** 2
    argument -= np.radians(phase_deg) + np.arctan(q0 / np.sqrt(1 - q0 ** 2))
    return -scale * np.sin(argument) * np.exp(-bfactor / 4 * u2)


def test_the_ctf_envelope_is_relions():
    rng = np.random.default_rng(1)
    fx, fy = rng.uniform(-0.3, 0.3, (2, 400))
    params = (16000.0, 15000.0, 40.0, 300.0, 2.7, 0.07, 10.0)
    for scale, bfactor in ((1.0, 0.0), (0.6, 120.0), (1.3, -40.0)):
        np.testing.assert_allclose(ctf_2d(fx, fy, *params, scale, bfactor),
                                   relion_ctf(fx, fy, *params, scale, bfactor), atol=1e-9)
    # a B-factor of 425 Å² between two particles: 70-fold at 5 Å (what a Warp/M file holds)
    at_5A = [ctf_2d(0.2, 0.0, *params, 1.0, b) for b in (0.0, 425.0)]
    assert at_5A[0] / at_5A[1] == pytest.approx(np.exp(425 / 4 / 25), rel=1e-9) and 69 < at_5A[0] / at_5A[1] < 71


def test_relion_ctf_scale_and_bfactor_reach_the_store_and_the_models_ctf(sim_dir, sim_store, tmp_path):
    rng = np.random.default_rng(2)
    bfactors = rng.uniform(-50, 400, 300).round(1)

    def envelope(tables):  # B-factor per particle (CtfRefine, Warp/M), scale per optics group
        tables["particles"]["rlnCtfBfactor"] = bfactors
        tables["optics"]["rlnCtfScalefactor"] = 0.8

    store, _ = converts(tmp_path, absolute_star(sim_dir, tmp_path, envelope))
    np.testing.assert_allclose(store["ctf_envelope"][:, 1], bfactors, atol=1e-4)
    np.testing.assert_allclose(store["ctf_envelope"][:, 0], 0.8, atol=1e-6)
    assert content_sha256(store) != content_sha256(open_store(sim_store))  # other CTFs, other particles

    batch = ParticleStore(str(tmp_path / "out.zarr")).read(0, 8)
    model = HetVAE(ModelShape(box=32, zdim=2, n_basis=3, encoder_hidden=16, encoder_blocks=1, encoder_radius=0.25,
                              max_radius=0.5), 4.0, 1.0)
    with_envelope = model.ctf({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    frequency = model.disk.coords.numpy() / (32 * 4.0)
    expected = np.stack([relion_ctf(frequency[:, 0], frequency[:, 1], *batch["ctf"][i, 2:].astype(np.float64),
                                    *batch["ctf_envelope"][i].astype(np.float64)) for i in range(8)])
    np.testing.assert_allclose(with_envelope, expected, atol=2e-4)


def test_stores_without_an_envelope_read_as_scale_1_and_b_0_and_a_lost_chunk_is_refused(sim_store, tmp_path):
    assert "ctf_envelope" not in ParticleStore(sim_store).read(0, 4)  # all (1, 0): the model skips it
    old = tmp_path / "old.zarr"
    shutil.copytree(sim_store, old)
    shutil.rmtree(old / "ctf_envelope")  # a store made before the array existed
    zarr_json = json.loads((old / "zarr.json").read_text())
    zarr_json.get("consolidated_metadata", {}).get("metadata", {}).pop("ctf_envelope", None)
    (old / "zarr.json").write_text(json.dumps(zarr_json))
    assert "ctf_envelope" not in ParticleStore(str(old)).read(0, 4)
    lost = tmp_path / "lost.zarr"
    shutil.copytree(sim_store, lost)
    for chunk in (lost / "ctf_envelope" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()  # zarr reads a missing chunk as its fill value: a scale of 0
    with pytest.raises(UserError, match="CTF scale of particle 0 .* is 0, not positive"):
        ParticleStore(str(lost)).read(0, 4)


def test_ctf_terms_hetrec_does_not_model_are_named_in_a_warning(sim_dir, tmp_path):
    def aberrations(tables):
        tables["optics"]["rlnBeamTiltX"] = 0.3
        tables["optics"]["rlnBeamTiltY"] = -0.1
        tables["optics"]["rlnOddZernike"] = "[0.0, 0.1, -0.2]"
        tables["optics"]["rlnMagMat00"], tables["optics"]["rlnMagMat11"] = 1.0, 1.0  # the identity: not named

    _, warned = converts(tmp_path, absolute_star(sim_dir, tmp_path, aberrations))
    named = [w for w in warned if "does not model" in w]
    assert len(named) == 1 and "beam tilt, odd Zernike terms" in named[0] and "magnification" not in named[0]
