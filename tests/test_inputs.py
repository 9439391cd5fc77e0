"""Inputs as RELION, cryoSPARC and cryoDRGN write them (docs/inputs.md): every quantity that two sources give is
reconciled by the documented rule or refused, every pickle layout cryoDRGN reads is read, split cryoSPARC
files are joined, missing CTF constants can be given, moved projects are found, optics groups can be picked,
and odd boxes are Fourier-cropped. Each input is built here from the simulated dataset; the right values
come from the reference store of the same particles (converted from the simulator's STAR file)."""

import os
import pickle
import shutil

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch
import zarr
from numpy.lib.recfunctions import repack_fields

from conftest import assert_one_line_error, run_cli
from test_convert import star_particles, write_cryodrgn, write_cryosparc
from test_convert_errors import convert_fails

from hetrec_dist.analysis.select import write_subset
from hetrec_dist.data.store import open_store
from hetrec_dist.data.summary import store_summary
from hetrec_dist.physics.fourier import fourier_crop
from hetrec_dist.simulate.render import project_atoms


def warnings_in(result):
    return [line for line in result.output.splitlines() if line.startswith("Warning: ")]


def converts(tmp_path, input_path, *extra, name="out.zarr"):
    """Convert; returns (the store, the run's warning lines)."""
    result = run_cli("convert", input_path, "-o", tmp_path / name, "--overwrite", *extra)
    return open_store(str(tmp_path / name)), warnings_in(result)


def absolute_star(sim_dir, tmp_path, edit=lambda tables: None, name="p.star"):
    """The simulated STAR with absolute stack paths, after edit(tables) changed it in place."""
    tables = star_particles(sim_dir)
    particles = tables["particles"]
    particles["rlnImageName"] = [f"{i}@{os.path.join(sim_dir, p)}"
                                 for i, p in particles["rlnImageName"].str.split("@").tolist()]
    edit(tables)
    starfile.write(tables, tmp_path / name)
    return tmp_path / name


# 1. No value silently wrong ------------------------------------------------------------------------------

def test_a_downsampled_stack_with_the_original_ctf_pkl_gets_the_downsampled_pixel_size(sim_dir, sim_store, tmp_path):
    """cryodrgn downsample's case: the stack is at box 16, ctf.pkl still says box 32 at 4 Å, so 8 Å."""
    write_cryodrgn(sim_dir, tmp_path)  # ctf.pkl: D = 32, Apix = 4.0
    images = open_store(sim_store)["images"][:]
    mrcfile.write(tmp_path / "small.mrcs", fourier_crop(images.astype(np.float64), 16).astype(np.float32))
    args = ("--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl")
    store, _ = converts(tmp_path, tmp_path / "small.mrcs", *args)
    assert store.attrs["pixel_size_A"] == 8.0 and store.attrs["box"] == 16
    np.testing.assert_array_equal(store["ctf"][:, :2], np.tile([16, 8.0], (300, 1)))
    np.testing.assert_allclose(store["shifts"][:], open_store(sim_store)["shifts"][:] / 2, atol=1e-5)
    store, warned = converts(tmp_path, tmp_path / "small.mrcs", *args, "--apix", 7.5)
    assert store.attrs["pixel_size_A"] == 7.5 and np.all(store["ctf"][:, 1] == 7.5)
    assert len(warned) == 1 and "--apix 7.5 replaces" in warned[0] and "8" in warned[0]


def test_ctf_pkl_rows_with_different_pixel_sizes_are_refused(sim_dir, tmp_path):
    stacks_txt = write_cryodrgn(sim_dir, tmp_path)
    ctf = pickle.load(open(tmp_path / "ctf.pkl", "rb"))
    ctf[7, 1] = 4.4
    pickle.dump(ctf, open(tmp_path / "ctf.pkl", "wb"))
    convert_fails(tmp_path, stacks_txt, "ctf.pkl", "pixel size (column 1) differs", "4 and 4.4",
                  extra=("--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl"))


def test_cs_rows_with_different_pixel_sizes_are_refused_unless_one_group_is_chosen(sim_dir, sim_store, tmp_path):
    records = write_cryosparc(sim_dir, tmp_path / "p.cs")
    records["ctf/exp_group_id"][150:] = 2
    records["blob/psize_A"][150:] = 4.2
    np.save(open(tmp_path / "p.cs", "wb"), records)
    convert_fails(tmp_path, tmp_path / "p.cs", "blob/psize_A differs", "group 1: 4", "group 2: 4.2", "--optics-group",
                  extra=("--datadir", sim_dir))
    store, _ = converts(tmp_path, tmp_path / "p.cs", "--datadir", sim_dir, "--optics-group", 2)
    assert store.attrs["pixel_size_A"] == pytest.approx(4.2)
    np.testing.assert_array_equal(store["source_row"][:], np.arange(150, 300))
    np.testing.assert_array_equal(store["images"][:], open_store(sim_store)["images"][150:])


def test_a_stack_header_that_disagrees_with_the_star_is_a_warning_and_the_star_wins(sim_dir, sim_store, tmp_path):
    shutil.copytree(sim_dir, tmp_path / "sim")
    with mrcfile.open(tmp_path / "sim" / "stacks" / "particles_0001.mrcs", mode="r+") as mrc:
        mrc.voxel_size = 4.5
    store, warned = converts(tmp_path, tmp_path / "sim" / "particles.star")
    assert store.attrs["pixel_size_A"] == 4.0
    assert len(warned) == 1 and "particles_0001.mrcs" in warned[0] and "4.5" in warned[0] and "4;" in warned[0]
    with mrcfile.open(tmp_path / "sim" / "stacks" / "particles_0001.mrcs", mode="r+") as mrc:
        mrc.voxel_size = 1.0  # what writers leave when they do not know: not a disagreement
    assert converts(tmp_path, tmp_path / "sim" / "particles.star")[1] == []


def test_star_fields_that_give_one_quantity_twice(sim_dir, sim_store, tmp_path):
    def both_origins_and_magnification(tables):
        particles = tables["particles"]
        particles["rlnOriginX"] = particles["rlnOriginXAngst"] / 4.0 + 0.5  # disagrees by half a pixel
        particles["rlnOriginY"] = particles["rlnOriginYAngst"] / 4.0
        particles["rlnDetectorPixelSize"], particles["rlnMagnification"] = 5.0, 10000.0  # says 5 Å

    store, warned = converts(tmp_path, absolute_star(sim_dir, tmp_path, both_origins_and_magnification))
    reference = open_store(sim_store)
    assert store.attrs["pixel_size_A"] == 4.0
    np.testing.assert_allclose(store["shifts"][:], reference["shifts"][:], atol=1e-5)
    assert len(warned) == 2
    assert any("rlnOriginXAngst" in w and "0.5 pixels" in w for w in warned)
    assert any("rlnDetectorPixelSize" in w and "5 Å/pixel" in w and "rlnImagePixelSize says 4" in w for w in warned)


def test_ctf_premultiplied_and_3d_particles_are_refused(sim_dir, tmp_path):
    def premultiplied(tables):
        tables["optics"]["rlnCtfDataAreCtfPremultiplied"] = 1

    convert_fails(tmp_path, absolute_star(sim_dir, tmp_path, premultiplied), "CTF-premultiplied")

    def three_d(tables):
        tables["optics"]["rlnImageDimensionality"] = 3

    convert_fails(tmp_path, absolute_star(sim_dir, tmp_path, three_d), "rlnImageDimensionality")


def test_options_that_the_input_type_does_not_read_are_refused(sim_dir, tmp_path):
    write_cryodrgn(sim_dir, tmp_path)
    star = os.path.join(sim_dir, "particles.star")
    convert_fails(tmp_path, star, "--poses does not apply to .star", extra=("--poses", tmp_path / "poses.pkl"))
    convert_fails(tmp_path, star, "--passthrough does not apply", extra=("--passthrough", tmp_path / "x.cs"))
    convert_fails(tmp_path, tmp_path / "stacks.txt", "--optics-group does not apply",
                  extra=("--optics-group", 1, "--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl"))


# 2. cryoDRGN's pickles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["tuple", "list", "torch", "two files", "with euler", "rotations only",
                                    "1-tuple"])
def test_every_pose_pickle_layout_cryodrgn_reads(sim_dir, sim_store, tmp_path, layout):
    stacks_txt = write_cryodrgn(sim_dir, tmp_path)
    rotations, translations = pickle.load(open(tmp_path / "poses.pkl", "rb"))
    euler = np.zeros((len(rotations), 3))
    contents = {"tuple": (rotations, translations), "list": [rotations, translations],
                "torch": (torch.tensor(rotations), torch.tensor(translations)),
                "with euler": (rotations, translations, euler), "rotations only": rotations,
                "1-tuple": (rotations,), "two files": rotations}[layout]
    pickle.dump(contents, open(tmp_path / "poses.pkl", "wb"))
    poses = ["--poses", tmp_path / "poses.pkl"]
    if layout == "two files":
        pickle.dump(translations, open(tmp_path / "trans.pkl", "wb"))
        poses += ["--poses", tmp_path / "trans.pkl"]
    store, warned = converts(tmp_path, stacks_txt, *poses, "--ctf", tmp_path / "ctf.pkl")
    reference = open_store(sim_store)
    np.testing.assert_allclose(store["rotations"][:], reference["rotations"][:], atol=1e-5)
    has_translations = layout not in ("rotations only", "1-tuple")
    expected_shifts = reference["shifts"][:] if has_translations else np.zeros((300, 2))
    np.testing.assert_allclose(store["shifts"][:], expected_shifts, atol=1e-4)
    assert len(warned) == (0 if layout in ("tuple", "list", "torch", "two files") else 1), warned


@pytest.mark.parametrize("case,fragments", [
    ("pixels", ["translations up to", "fractions of the box", "divide them by the box (32)"]),
    ("euler", ["(300, 3)", "Euler angles"]),
    ("reflection", ["row 6: the pose is not a rotation"]),
    ("dict", ["numeric array", "found dict"]),
    ("strings", ["numeric array"]),
])
def test_pose_pickles_that_cannot_be_right_are_refused(sim_dir, tmp_path, case, fragments):
    stacks_txt = write_cryodrgn(sim_dir, tmp_path)
    rotations, translations = pickle.load(open(tmp_path / "poses.pkl", "rb"))
    if case == "reflection":
        rotations[5] = -rotations[5]
    contents = {"pixels": (rotations, translations * 32), "euler": (np.zeros((300, 3)), translations),
                "reflection": (rotations, translations), "dict": {"rot": rotations},
                "strings": (["a"] * 300, translations)}[case]
    pickle.dump(contents, open(tmp_path / "poses.pkl", "wb"))
    convert_fails(tmp_path, stacks_txt, "poses.pkl", *fragments,
                  extra=("--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl"))


# 3. cryoSPARC's split files -------------------------------------------------------------------------------

def split_cryosparc(sim_dir, folder):
    """The simulated particles as a refinement job writes them: J9_particles.cs with uid and alignments3D/*,
    J9_passthrough_particles.cs with uid, blob/* and ctf/*, its rows in another order."""
    os.makedirs(folder, exist_ok=True)
    records = write_cryosparc(sim_dir, folder / "whole.cs")
    os.remove(folder / "whole.cs")
    records["uid"] = np.random.default_rng(0).permutation(10 ** 6)[:len(records)]
    names = records.dtype.names
    main = records[["uid"] + [n for n in names if n.startswith("alignments3D/")]]
    passthrough = records[["uid"] + [n for n in names if n.startswith(("blob/", "ctf/"))]]
    np.save(open(folder / "J9_particles.cs", "wb"), repack_fields(main))
    np.save(open(folder / "J9_passthrough_particles.cs", "wb"), repack_fields(passthrough)[::-1])
    return records


def test_a_particles_cs_is_joined_with_its_passthrough_given_or_found(sim_dir, sim_store, tmp_path):
    records = split_cryosparc(sim_dir, tmp_path / "J9")
    reference = open_store(sim_store)
    for extra in (("--passthrough", tmp_path / "J9" / "J9_passthrough_particles.cs"), ()):
        store, _ = converts(tmp_path, tmp_path / "J9" / "J9_particles.cs", "--datadir", sim_dir, *extra)
        for name in ("images", "rotations", "shifts", "ctf"):
            np.testing.assert_allclose(store[name][:], reference[name][:], atol=1e-4, err_msg=name)
        assert len(store.attrs["sources"]["metadata"]) == 2
    write_subset(np.array([3, 1]), store.attrs.asdict(), store["source_row"][:], str(tmp_path / "subset.cs"))
    subset = np.load(tmp_path / "subset.cs")
    np.testing.assert_array_equal(subset["uid"], records["uid"][[3, 1]])
    np.testing.assert_array_equal(subset["ctf/df1_A"], records["ctf/df1_A"][[3, 1]])  # passthrough fields too


def test_a_particles_cs_without_its_passthrough_names_the_way_out(sim_dir, tmp_path):
    split_cryosparc(sim_dir, tmp_path / "J9")
    os.remove(tmp_path / "J9" / "J9_passthrough_particles.cs")
    convert_fails(tmp_path, tmp_path / "J9" / "J9_particles.cs", "J9_particles.cs", "blob/path", "--passthrough",
                  "Export", extra=("--datadir", sim_dir))
    other = write_cryosparc(sim_dir, tmp_path / "other.cs")[:10]
    np.save(open(tmp_path / "other.cs", "wb"), other)
    convert_fails(tmp_path, tmp_path / "J9" / "J9_particles.cs", "other.cs", "lacks 300 of the 300",
                  extra=("--datadir", sim_dir, "--passthrough", tmp_path / "other.cs"))


# 4. Values a file lacks -----------------------------------------------------------------------------------

def test_ctf_constants_a_star_lacks_are_given_by_options_and_replace_with_a_warning(sim_dir, sim_store, tmp_path):
    def without_amplitude_contrast(tables):
        del tables["optics"]["rlnAmplitudeContrast"]

    star = absolute_star(sim_dir, tmp_path, without_amplitude_contrast)
    convert_fails(tmp_path, star, "no rlnAmplitudeContrast", "--amplitude-contrast")
    store, warned = converts(tmp_path, star, "--amplitude-contrast", 0.1)
    np.testing.assert_allclose(store["ctf"][:], open_store(sim_store)["ctf"][:], rtol=1e-6)
    assert warned == []
    store, warned = converts(tmp_path, star, "--amplitude-contrast", 0.07, "--voltage-kv", 200, "--cs-mm", 0.01,
                             "--phase-shift-deg", 90)
    np.testing.assert_allclose(store["ctf"][:, 5:], np.tile([200, 0.01, 0.07, 90], (300, 1)), rtol=1e-6)
    shown = store_summary(str(tmp_path / "out.zarr"))
    assert shown["voltage_kv"] == [200.0, 200.0] and shown["amplitude_contrast"] == pytest.approx([0.07, 0.07])
    assert len(warned) == 3 and all("replaces" in w for w in warned), warned
    assert any("--voltage-kv 200 replaces rlnVoltage = 300" in w for w in warned)


# 5. Projects that moved -----------------------------------------------------------------------------------

def test_a_star_with_absolute_paths_from_another_machine_finds_its_stacks_under_datadir(sim_dir, sim_store, tmp_path):
    project = tmp_path / "new_disk" / "proj"
    shutil.copytree(os.path.join(sim_dir, "stacks"), project / "Extract" / "job012" / "Movies")

    def moved(tables):
        tables["particles"]["rlnImageName"] = [
            f"{i}@/old/disk/proj/Extract/job012/Movies/{os.path.basename(p)}"
            for i, p in tables["particles"]["rlnImageName"].str.split("@").tolist()]

    star = absolute_star(sim_dir, tmp_path, moved)
    store, _ = converts(tmp_path, star, "--datadir", project, name="found.zarr")
    np.testing.assert_array_equal(store["images"][:], open_store(sim_store)["images"][:])
    result = convert_fails(tmp_path, star, "particles_0000.mrcs", "not found",
                           f"{tmp_path}/Extract/job012/Movies/particles_0000.mrcs",
                           f"{tmp_path}/particles_0000.mrcs", "--datadir")
    assert "np.str_" not in result.output


def test_relion_project_layout_needs_no_datadir(sim_dir, sim_store, tmp_path):
    """RELION names stacks relative to the project folder, two levels above Refine3D/job042/run_data.star."""
    shutil.copytree(os.path.join(sim_dir, "stacks"), tmp_path / "stacks")
    os.makedirs(tmp_path / "Refine3D" / "job042")
    shutil.copy(os.path.join(sim_dir, "particles.star"), tmp_path / "Refine3D" / "job042" / "run_data.star")
    store, _ = converts(tmp_path, tmp_path / "Refine3D" / "job042" / "run_data.star")
    np.testing.assert_array_equal(store["images"][:], open_store(sim_store)["images"][:])


# 6. One optics group out of several -----------------------------------------------------------------------

def test_optics_groups_with_different_pixel_sizes_convert_one_at_a_time(sim_dir, sim_store, tmp_path):
    def two_groups(tables):
        second = tables["optics"].assign(rlnOpticsGroup=2, rlnOpticsGroupName="opticsGroup2", rlnImagePixelSize=4.4)
        tables["optics"] = pd.concat([tables["optics"], second], ignore_index=True)
        tables["particles"].loc[1::2, "rlnOpticsGroup"] = 2

    star = absolute_star(sim_dir, tmp_path, two_groups)
    convert_fails(tmp_path, star, "rlnImagePixelSize differs", "group 1: 4", "group 2: 4.4", "--optics-group N")
    convert_fails(tmp_path, star, "no optics group 3", "rlnOpticsGroup holds 1, 2", extra=("--optics-group", 3))
    store, _ = converts(tmp_path, star, "--optics-group", 2)
    reference = open_store(sim_store)
    assert store.attrs["pixel_size_A"] == pytest.approx(4.4) and store["images"].shape[0] == 150
    np.testing.assert_array_equal(store["source_row"][:], np.arange(1, 300, 2))
    np.testing.assert_array_equal(store["images"][:], reference["images"][1::2])
    np.testing.assert_allclose(store["shifts"][:], reference["shifts"][1::2] * 4.0 / 4.4, atol=1e-4)
    write_subset(np.array([0, 2]), store.attrs.asdict(), store["source_row"][:], str(tmp_path / "subset.star"))
    subset = starfile.read(tmp_path / "subset.star", always_dict=True)
    original = starfile.read(star, always_dict=True)["particles"]
    assert subset["particles"]["rlnImageName"].tolist() == original["rlnImageName"].iloc[[1, 5]].tolist()
    assert len(subset["optics"]) == 2


# 7. Messages that say how to recover ----------------------------------------------------------------------

def test_a_truncated_stack_says_so_and_a_changed_input_is_named(sim_dir, tmp_path):
    shutil.copytree(sim_dir, tmp_path / "sim")
    stack = tmp_path / "sim" / "stacks" / "particles_0002.mrcs"
    whole = stack.read_bytes()
    stack.write_bytes(whole[:-5000])
    star = tmp_path / "sim" / "particles.star"
    convert_fails(tmp_path, star, "particles_0002.mrcs", "truncated", f"{len(whole)} bytes",
                  f"the file has {len(whole) - 5000} bytes")
    stack.write_bytes(whole)
    run_cli("convert", star, "-o", tmp_path / "p.zarr", "-q")
    zarr.open_group(tmp_path / "p.zarr", mode="r+").attrs["complete"] = False
    stack.write_bytes(whole + b"\0" * 4096)
    result = run_cli("convert", star, "-o", tmp_path / "p.zarr", "-q", expect_ok=False)
    assert_one_line_error(result, "unfinished conversion", "particles_0002.mrcs changed", f"was {len(whole)}",
                          f"now {len(whole) + 4096}", "--overwrite")


def test_what_mrcfile_tolerates_is_one_warning_per_message_and_none_under_quiet(sim_dir, tmp_path):
    shutil.copytree(sim_dir, tmp_path / "sim")
    for stack in (tmp_path / "sim" / "stacks").iterdir():
        data = bytearray(stack.read_bytes())
        data[208:212] = b"XXXX"  # the map ID "MAP "
        stack.write_bytes(bytes(data))
    star = tmp_path / "sim" / "particles.star"
    result = run_cli("convert", star, "-o", tmp_path / "p.zarr")
    warned = warnings_in(result)
    assert len(warned) == 1 and "Map ID string not found" in warned[0] and "and 2 more stacks" in warned[0]
    assert "RuntimeWarning" not in result.output
    result = run_cli("convert", star, "-o", tmp_path / "p.zarr", "-q", "--overwrite")
    assert result.output.strip() == ""


# 8. Odd boxes ---------------------------------------------------------------------------------------------

def test_fourier_cropping_an_odd_box_equals_rendering_at_the_coarser_pixel_size():
    rng = np.random.default_rng(2)
    atoms = rng.normal(size=(2, 12, 3)) * 4
    kwargs = dict(weights=np.ones(12), sigma_A=5.0, rotations=np.tile(np.eye(3), (2, 1, 1)),
                  shifts_px=np.array([[0.0, 0.0], [1.3, -2.1]]))
    fine = project_atoms(atoms, box=65, pixel_size_A=1.0, **kwargs)
    coarse = project_atoms(atoms, box=32, pixel_size_A=65 / 32, shifts_px=kwargs.pop("shifts_px") * 32 / 65,
                           **kwargs)
    np.testing.assert_allclose(fourier_crop(fine, 32), coarse, atol=1e-5 * np.abs(coarse).max())


def test_an_odd_box_stack_converts_to_an_even_box(tmp_path):
    rng = np.random.default_rng(3)
    atoms, n, pixel_size_A = rng.normal(size=(1, 12, 3)) * 3, 6, 1.5
    shifts_px = rng.uniform(-2, 2, (n, 2))
    kwargs = dict(weights=np.ones(12), sigma_A=5.0, rotations=np.tile(np.eye(3), (n, 1, 1)))
    images = project_atoms(np.repeat(atoms, n, 0), box=45, pixel_size_A=pixel_size_A, shifts_px=shifts_px, **kwargs)
    mrcfile.write(tmp_path / "odd.mrcs", images.astype(np.float32), voxel_size=pixel_size_A)
    star = absolute_star_for(tmp_path / "odd.mrcs", n, pixel_size_A, shifts_px * pixel_size_A)
    convert_fails(tmp_path, star, "--box 21", "even", extra=("--box", 21))
    store, _ = converts(tmp_path, star, "--box", 22)
    new_pixel_size = pixel_size_A * 45 / 22
    assert store.attrs["pixel_size_A"] == pytest.approx(new_pixel_size)
    np.testing.assert_allclose(store["shifts"][:], shifts_px * 22 / 45, atol=1e-5)
    expected = project_atoms(np.repeat(atoms, n, 0), box=22, pixel_size_A=new_pixel_size,
                             shifts_px=shifts_px * 22 / 45, **kwargs)
    np.testing.assert_allclose(store["images"][:], expected, atol=1e-4 * np.abs(expected).max())
    _, warned = converts(tmp_path, star)
    assert len(warned) == 1 and "box (45) is odd" in warned[0] and "--box 44" in warned[0]


def absolute_star_for(stack, n, pixel_size_A, origins_A):
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1}@{stack}" for i in range(n)], "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0,
        "rlnAnglePsi": 0.0, "rlnOriginXAngst": origins_A[:, 0], "rlnOriginYAngst": origins_A[:, 1],
        "rlnDefocusU": 15000.0, "rlnDefocusV": 15000.0, "rlnDefocusAngle": 0.0, "rlnOpticsGroup": 1})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [pixel_size_A]})
    path = os.path.join(os.path.dirname(stack), "odd.star")
    starfile.write({"optics": optics, "particles": particles}, path)
    return path


# Values no microscope gives, and files that are not what they say ------------------------------------------

def _set(block, column, row, value):
    def edit(tables):
        tables[block] = tables[block].astype({column: object})
        tables[block].loc[row, column] = value
    return edit


@pytest.mark.parametrize("edit,fragments", [
    (_set("particles", "rlnDefocusU", 3, np.nan), ["data_particles row 4", "rlnDefocusU is nan", "not a number"]),
    (_set("particles", "rlnAngleRot", 2, "abc"), ["row 3", "rlnAngleRot is 'abc'"]),
    (_set("particles", "rlnAngleTilt", 5, np.inf), ["row 6", "not a rotation"]),
    (_set("optics", "rlnImagePixelSize", 0, -4.0), ["the pixel size is -4"]),
    (_set("optics", "rlnVoltage", 0, 0.0), ["row 1 (and 299 more)", "voltage (kV) is 0", "positive"]),
    (_set("optics", "rlnAmplitudeContrast", 0, 1.5), ["amplitude contrast is 1.5"]),
    (_set("optics", "rlnImageSize", 0, 32.5), ["rlnImageSize is 32.5", "not a whole number"]),
    (_set("particles", "rlnImageName", 5, "6@"), ["row 6", "names no stack"]),
    (lambda t: t.update(particles=t["particles"].iloc[:0]), ["lists no particles"]),
    (lambda t: t.update(optics=pd.concat([t["optics"]] * 2)), ["optics group 1 twice"]),
    (lambda t: t["particles"].pop("rlnOriginYAngst"), ["rlnOriginYAngst missing"]),
    (lambda t: t.update(particles=pd.concat([t["particles"], t["particles"][["rlnDefocusU"]]], axis=1)),
     ["data_particles has the column rlnDefocusU twice"]),
])
def test_star_values_that_cannot_be_right_are_refused(sim_dir, tmp_path, edit, fragments):
    convert_fails(tmp_path, absolute_star(sim_dir, tmp_path, edit), "p.star", *fragments)


def test_cs_and_pkl_values_that_cannot_be_right_are_refused(sim_dir, tmp_path):
    split_cryosparc(sim_dir, tmp_path / "J9")
    passthrough = np.load(tmp_path / "J9" / "J9_passthrough_particles.cs")
    np.save(open(tmp_path / "J9" / "J9_passthrough_particles.cs", "wb"), np.concatenate([passthrough[:1], passthrough]))
    convert_fails(tmp_path, tmp_path / "J9" / "J9_particles.cs", "J9_passthrough_particles.cs",
                  "uid appears on more than one row", extra=("--datadir", sim_dir))
    records = write_cryosparc(sim_dir, tmp_path / "p.cs")
    records["alignments3D/pose"][4] = np.nan
    np.save(open(tmp_path / "p.cs", "wb"), records)
    convert_fails(tmp_path, tmp_path / "p.cs", "row 5", "not a rotation", extra=("--datadir", sim_dir))
    stacks_txt = write_cryodrgn(sim_dir, tmp_path)
    rotations, translations = pickle.load(open(tmp_path / "poses.pkl", "rb"))
    translations[2, 0] = np.nan
    pickle.dump((rotations, translations), open(tmp_path / "poses.pkl", "wb"))
    convert_fails(tmp_path, stacks_txt, "poses.pkl", "row 3", "shift", "finite",
                  extra=("--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl"))


def test_stacks_and_options_that_cannot_be_right(sim_dir, tmp_path, monkeypatch):
    images = np.zeros((4, 32, 32), dtype=np.complex64)
    mrcfile.write(tmp_path / "complex.mrcs", images)
    star = absolute_star_for(tmp_path / "complex.mrcs", 4, 4.0, np.zeros((4, 2)))
    convert_fails(tmp_path, star, "complex.mrcs", "complex numbers (MRC mode 4)")
    mrcfile.write(tmp_path / "bright.mrcs", np.full((4, 32, 32), 1e6, dtype=np.float32))
    star = absolute_star_for(tmp_path / "bright.mrcs", 4, 4.0, np.zeros((4, 2)))
    convert_fails(tmp_path, star, "bright.mrcs", "do not fit in float16", "--dtype float32",
                  extra=("--dtype", "float16"))
    for option in ("--apix", "--voltage-kv", "--phase-shift-deg"):
        result = run_cli("convert", star, "-o", tmp_path / "o.zarr", option, "nan", expect_ok=False)
        assert result.exit_code == 2 and "nan is not a number" in result.output
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "precious.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path / "work")
    result = run_cli("convert", star, "-o", "", expect_ok=False)
    assert result.exit_code == 2 and "an empty path" in result.output
    assert os.listdir(tmp_path / "work") == ["precious.txt"]
