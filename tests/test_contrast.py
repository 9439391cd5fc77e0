"""Contrast (issue 30, item 2): the same particles written white and written dark, with each package's marking
(RELION's STAR, cryoSPARC's blob/sign of -1 and +1, cryoDRGN's pickles), convert to the same store of white
particles; the measurement that decides it is checked on images made here from a known object and CTF."""

import os
import shutil

import mrcfile
import numpy as np
import pytest
from numpy.lib import recfunctions
from test_inputs import converts

from conftest import assert_one_line_error, run_cli
from test_convert import write_cryodrgn, write_cryosparc

from hetrec_dist.data.contrast import CONCLUSIVE_Z, contrast_scores
from hetrec_dist.data.convert import _what_changed
from hetrec_dist.data.store import IDENTITY_ATTR, open_store
from hetrec_dist.physics.ctf import ctf_2d
from hetrec_dist.physics.fourier import frequency_grid_2d


def _copy_with_images(sim_dir, folder, transform):
    """A copy of the simulated dataset whose stacks hold transform(images)."""
    shutil.copytree(sim_dir, folder)
    for name in os.listdir(folder / "stacks"):
        path = folder / "stacks" / name
        images = mrcfile.read(path)
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(transform(images).astype(np.float32))
            mrc.voxel_size = 4.0
    return folder


def _input(kind, folder, tmp_path):
    """(the input file, the extra options) of the dataset in `folder` written as `kind`."""
    if kind == "star":
        return folder / "particles.star", ()
    if kind == "pkl":
        os.makedirs(tmp_path / "pkl", exist_ok=True)
        return write_cryodrgn(str(folder), tmp_path / "pkl"), ("--poses", tmp_path / "pkl" / "poses.pkl",
                                                               "--ctf", tmp_path / "pkl" / "ctf.pkl")
    records = write_cryosparc(str(folder), tmp_path / "p.cs")
    sign = -1.0 if kind == "cs -1" else 1.0
    records = recfunctions.append_fields(records, "blob/sign", np.full(len(records), sign, np.float32), usemask=False)
    np.save(open(tmp_path / "p.cs", "wb"), records)
    return tmp_path / "p.cs", ("--datadir", folder)


@pytest.mark.parametrize("kind", ["star", "cs -1", "cs +1", "pkl"])
def test_white_and_dark_particles_with_each_packages_marking_give_the_same_white_store(sim_dir, sim_store, tmp_path,
                                                                                       kind):
    reference = open_store(sim_store)
    stores = {}
    for contrast, transform in (("white", lambda images: images), ("dark", lambda images: -images)):
        folder = _copy_with_images(sim_dir, tmp_path / contrast, transform)
        path, extra = _input(kind, folder, tmp_path / contrast)
        store, warnings = converts(tmp_path, path, *extra, name=f"{contrast}.zarr")
        np.testing.assert_array_equal(store["images"][:], reference["images"][:])
        record = store.attrs["contrast"]
        assert (record["input"], record["stored"], record["decided_by"]) == (contrast, "white", "measured")
        assert record["z"] * (1 if contrast == "white" else -1) >= CONCLUSIVE_Z, record
        said = [line for line in warnings if "particles are dark" in line]
        assert len(said) == (contrast == "dark"), warnings
        if said:
            assert "negated" in said[0] and "--contrast white" in said[0]
        stores[contrast] = store
    assert stores["white"].attrs[IDENTITY_ATTR] == stores["dark"].attrs[IDENTITY_ATTR]


def test_the_users_word_overrides_the_measurement_with_a_warning(sim_dir, sim_store, tmp_path):
    dark = _copy_with_images(sim_dir, tmp_path / "dark", lambda images: -images)
    reference = open_store(sim_store)["images"][:]
    store, warnings = converts(tmp_path, dark / "particles.star", "--contrast", "white")
    np.testing.assert_array_equal(store["images"][:], -reference)
    assert store.attrs["contrast"]["decided_by"] == "--contrast white"
    assert any("--contrast white, but the particles look dark" in line for line in warnings), warnings
    for flag in (("--contrast", "dark"), ("--invert-contrast",)):  # hetrec 0.1's flag says the same
        store, warnings = converts(tmp_path, dark / "particles.star", *flag)
        np.testing.assert_array_equal(store["images"][:], reference)
        assert not warnings
    result = run_cli("convert", dark / "particles.star", "-o", tmp_path / "x.zarr", "--invert-contrast",
                     "--contrast", "white", expect_ok=False)
    assert_one_line_error(result, "--invert-contrast", "--contrast white")


def test_images_that_do_not_show_their_contrast(sim_dir, tmp_path):
    """Pure noise: a STAR's particles are taken as white with a warning; a cryoSPARC blob/sign of +1 (not the
    -1 cryoSPARC writes) is refused in one line, leaving no complete store."""
    rng = np.random.default_rng(0)
    noise = _copy_with_images(sim_dir, tmp_path / "noise", lambda images: rng.normal(size=images.shape))
    store, warnings = converts(tmp_path, noise / "particles.star")
    assert store.attrs["contrast"]["decided_by"] == "assumed" and abs(store.attrs["contrast"]["z"]) < CONCLUSIVE_Z
    assert any("do not show whether the particles are white or dark" in line for line in warnings), warnings
    path, extra = _input("cs +1", noise, tmp_path)
    result = run_cli("convert", path, "-o", tmp_path / "cs.zarr", *extra, expect_ok=False)
    assert_one_line_error(result, "blob/sign is +1", "--contrast white or --contrast dark")
    assert not os.path.exists(tmp_path / "cs.zarr" / "zarr.json") or not open_store(
        str(tmp_path / "cs.zarr"), require_complete=False).attrs.get("complete")
    store, _ = converts(tmp_path, path, *extra, "--contrast", "dark", name="cs.zarr")
    assert store.attrs["invert_contrast"]


def _image_of_blob(box, pixel_size_A, defocus_A, centre_px):
    """A positive Gaussian blob (protein) at centre_px (x, y) from pixel D//2, through the CTF: an image of
    white contrast in RELION's convention, computed here in Fourier space from the blob's analytic transform."""
    fx, fy = frequency_grid_2d(box, pixel_size_A)
    sigma_A = 0.2 * box * pixel_size_A
    spectrum = np.exp(-2 * (np.pi * sigma_A) ** 2 * (fx ** 2 + fy ** 2))
    spectrum = spectrum * np.exp(-2j * np.pi * (fx * centre_px[0] + fy * centre_px[1]) * pixel_size_A)
    spectrum = spectrum * ctf_2d(fx, fy, defocus_A, defocus_A, 0.0, 300.0, 2.7, 0.1)
    return np.real(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum))))


@pytest.mark.parametrize("box, pixel_size_A", [(64, 2.0), (256, 1.0)])  # 256: cropped to 128 to measure
def test_the_measurement_sees_white_blobs_at_any_defocus_and_follows_the_shift(box, pixel_size_A):
    defoci_A = np.array([5000.0, 15000.0, 30000.0])
    shift_px = np.array([0.08 * box, -0.05 * box])  # the particle centre lies at -shift from pixel D//2
    images = np.stack([_image_of_blob(box, pixel_size_A, d, -shift_px) for d in defoci_A])
    ctf = np.zeros((3, 9))
    ctf[:, 2], ctf[:, 3], ctf[:, 5], ctf[:, 6], ctf[:, 7] = defoci_A, defoci_A, 300.0, 2.7, 0.1
    shifts = np.tile(shift_px, (3, 1))
    scores = contrast_scores(images, shifts, ctf, pixel_size_A)
    assert (scores > 1).all(), scores
    np.testing.assert_allclose(contrast_scores(-images, shifts, ctf, pixel_size_A), -scores, rtol=1e-9)
    centred = np.stack([_image_of_blob(box, pixel_size_A, d, (0.0, 0.0)) for d in defoci_A])
    np.testing.assert_allclose(contrast_scores(centred, 0 * shifts, ctf, pixel_size_A), scores, rtol=0.02)


def test_a_conversion_stopped_by_a_bad_image_resumes_once_the_image_is_fixed(sim_dir, sim_store, tmp_path):
    """A NaN image among those the contrast is measured on stops the conversion before the store is made
    (nothing is left behind); once the image is fixed, the same command converts. And a resumed conversion
    must match the contrast decision, not its measurement, which a changed image moves a little."""
    folder = _copy_with_images(sim_dir, tmp_path / "nan", lambda images: images)
    stack = sorted((folder / "stacks").iterdir())[-1]
    good = mrcfile.read(stack).copy()
    bad = good.copy()
    bad[-1, 3, 3] = np.nan
    mrcfile.write(stack, bad, overwrite=True, voxel_size=4.0)
    command = ("convert", folder / "particles.star", "-o", tmp_path / "p.zarr", "--chunk-images", 50, "-q")
    assert_one_line_error(run_cli(*command, expect_ok=False), "NaN")
    assert not (tmp_path / "p.zarr").exists()
    mrcfile.write(stack, good, overwrite=True, voxel_size=4.0)
    run_cli(*command)
    np.testing.assert_array_equal(open_store(str(tmp_path / "p.zarr"))["images"][:],
                                  open_store(sim_store)["images"][:])
    attrs = open_store(str(tmp_path / "p.zarr")).attrs.asdict()
    moved = {**attrs, "contrast": {**attrs["contrast"], "z": attrs["contrast"]["z"] + 0.4}}
    assert _what_changed(attrs, moved) == []
    other = {**attrs, "contrast": {**attrs["contrast"], "input": "dark"}}
    assert len(_what_changed(attrs, other)) == 1
