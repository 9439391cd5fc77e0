import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import mrcfile
import numpy as np
import pytest
import starfile
import zarr

from conftest import assert_one_line_error, assert_same_store, run_cli

from hetrec_dist.data.store import open_store
from hetrec_dist.errors import UserError
from hetrec_dist.physics.rotations import cryosparc_pose_from_matrices, matrices_from_relion_euler

HETREC = [sys.executable, "-m", "hetrec_dist.cli.__main__"]


def star_particles(sim_dir):
    return starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)


def stack_images(sim_dir):
    """All simulated images in particle order, read directly from the stacks."""
    names = star_particles(sim_dir)["particles"]["rlnImageName"].str.split("@", expand=True)
    stacks = {path: mrcfile.read(os.path.join(sim_dir, path)) for path in names[1].unique()}
    return np.stack([stacks[path][int(i) - 1] for i, path in zip(names[0], names[1])])


def relion_poses(sim_dir):
    df = star_particles(sim_dir)["particles"]
    rotations = matrices_from_relion_euler(df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"])
    shifts = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 4.0
    return rotations, shifts


def write_cryosparc(sim_dir, path):
    """The simulated particles as a cryoSPARC .cs file (written from the STAR, independently of the reader)."""
    df = star_particles(sim_dir)["particles"]
    rotations, shifts = relion_poses(sim_dir)
    n = len(df)
    names = df["rlnImageName"].str.split("@", expand=True)
    dtype = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,)),
             ("alignments3D/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"),
             ("ctf/amp_contrast", "<f4"), ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
             ("ctf/phase_shift_rad", "<f4"), ("ctf/exp_group_id", "<u4")]
    records = np.zeros(n, dtype=dtype)
    records["uid"] = np.arange(n)
    records["blob/path"] = [(">" + p).encode() for p in names[1]]
    records["blob/idx"] = names[0].astype(int) - 1
    records["blob/shape"] = 32
    records["blob/psize_A"] = 4.0
    records["alignments3D/pose"] = cryosparc_pose_from_matrices(rotations)
    records["alignments3D/shift"] = shifts / 2  # refined at half the pixel size: the reader rescales
    records["alignments3D/psize_A"] = 8.0
    records["ctf/accel_kv"], records["ctf/cs_mm"], records["ctf/amp_contrast"] = 300, 2.7, 0.1
    records["ctf/df1_A"], records["ctf/df2_A"] = df["rlnDefocusU"], df["rlnDefocusV"]
    records["ctf/df_angle_rad"] = np.radians(df["rlnDefocusAngle"])
    records["ctf/exp_group_id"] = 1
    with open(path, "wb") as f:
        np.save(f, records)
    return records


def write_cryodrgn(sim_dir, directory):
    df = star_particles(sim_dir)["particles"]
    rotations, shifts = relion_poses(sim_dir)
    ctf = np.stack([np.full(len(df), 32), np.full(len(df), 4.0), df["rlnDefocusU"], df["rlnDefocusV"],
                    df["rlnDefocusAngle"], np.full(len(df), 300.0), np.full(len(df), 2.7), np.full(len(df), 0.1),
                    np.zeros(len(df))], axis=1)
    stacks = sorted(os.listdir(os.path.join(sim_dir, "stacks")))
    with open(directory / "stacks.txt", "w") as f:
        f.write("\n".join(os.path.join(sim_dir, "stacks", s) for s in stacks))
    pickle.dump((rotations, shifts / 32), open(directory / "poses.pkl", "wb"))
    pickle.dump(ctf, open(directory / "ctf.pkl", "wb"))
    return directory / "stacks.txt"


def test_float32_images_round_trip_bit_exactly_with_poses(sim_dir, sim_store):
    group = open_store(sim_store)
    np.testing.assert_array_equal(group["images"][:], stack_images(sim_dir))
    rotations, shifts = relion_poses(sim_dir)
    np.testing.assert_allclose(group["rotations"][:], rotations, atol=1e-5)
    np.testing.assert_allclose(group["shifts"][:], shifts, atol=1e-5)
    attrs = group.attrs.asdict()
    assert attrs["complete"] and attrs["box"] == 32 and attrs["pixel_size_A"] == 4.0
    images = stack_images(sim_dir).astype(np.float64)
    assert abs(attrs["normalization"]["mean"] - images.mean()) < 1e-9 * images.std() + 1e-12
    assert abs(attrs["normalization"]["std"] - images.std()) < 1e-6 * images.std()
    np.testing.assert_array_equal(group["source_index"][:], np.arange(300) % 128)


def test_cryosparc_and_cryodrgn_inputs_give_the_same_store_as_the_star(sim_dir, sim_store, tmp_path):
    write_cryosparc(sim_dir, tmp_path / "particles.cs")
    run_cli("convert", tmp_path / "particles.cs", "-o", tmp_path / "cs.zarr", "--datadir", sim_dir, "-q")
    stacks_txt = write_cryodrgn(sim_dir, tmp_path)
    run_cli("convert", stacks_txt, "--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl",
            "-o", tmp_path / "pkl.zarr", "-q")
    reference = open_store(sim_store)
    for other in (open_store(str(tmp_path / "cs.zarr")), open_store(str(tmp_path / "pkl.zarr"))):
        np.testing.assert_array_equal(other["images"][:], reference["images"][:])
        np.testing.assert_allclose(other["rotations"][:], reference["rotations"][:], atol=1e-5)
        np.testing.assert_allclose(other["shifts"][:], reference["shifts"][:], atol=1e-4)
        np.testing.assert_allclose(other["ctf"][:], reference["ctf"][:], rtol=1e-5, atol=1e-3)


def test_relion_30_star_without_optics_and_with_pixel_origins(sim_dir, sim_store, tmp_path):
    df = star_particles(sim_dir)["particles"].copy()
    df["rlnOriginX"], df["rlnOriginY"] = df.pop("rlnOriginXAngst") / 4.0, df.pop("rlnOriginYAngst") / 4.0
    df["rlnImageName"] = [f"{i}@{os.path.join(sim_dir, p)}" for i, p in df["rlnImageName"].str.split("@").tolist()]
    df = df.drop(columns="rlnOpticsGroup").assign(rlnVoltage=300.0, rlnSphericalAberration=2.7,
                                                   rlnAmplitudeContrast=0.1, rlnDetectorPixelSize=4.0,
                                                   rlnMagnification=10000.0)
    starfile.write(df, tmp_path / "old.star")
    run_cli("convert", tmp_path / "old.star", "-o", tmp_path / "old.zarr", "-q")
    old, reference = open_store(str(tmp_path / "old.zarr")), open_store(sim_store)
    assert old.attrs["pixel_size_A"] == 4.0 and old.attrs["box"] == 32
    for name in ("images", "rotations", "shifts", "ctf"):
        np.testing.assert_allclose(old[name][:], reference[name][:], atol=1e-5, err_msg=name)


def test_fourier_cropping_updates_pixel_size_shifts_and_ctf(sim_dir, sim_store, tmp_path):
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", tmp_path / "d.zarr", "--box", 16,
            "--dtype", "float16", "--invert-contrast", "-q")
    small, reference = open_store(str(tmp_path / "d.zarr")), open_store(sim_store)
    assert small.attrs["pixel_size_A"] == 8.0 and small["images"].dtype == np.float16
    np.testing.assert_allclose(small["shifts"][:], reference["shifts"][:] / 2, atol=1e-6)
    np.testing.assert_allclose(small["ctf"][:, :2], np.tile([16, 8.0], (300, 1)))
    from hetrec_dist.physics.fourier import fourier_crop
    expected = -fourier_crop(reference["images"][:5].astype(np.float64), 16)
    np.testing.assert_allclose(small["images"][:5].astype(np.float64), expected, atol=2e-3 * np.abs(expected).max())


def test_workers_and_mpi_ranks_write_the_same_store(sim_dir, sim_store, tmp_path):
    star = os.path.join(sim_dir, "particles.star")
    run_cli("convert", star, "-o", tmp_path / "w.zarr", "--chunk-images", 32, "-j", 2, "-q")
    assert_same_store(sim_store, tmp_path / "w.zarr", ignore_attrs=["command"])
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install mpich)")
    subprocess.run([mpiexec, "-n", "2", *HETREC, "convert", star, "-o", tmp_path / "m.zarr", "--chunk-images", "32",
                    "-q"], check=True, timeout=120)
    assert_same_store(sim_store, tmp_path / "m.zarr", ignore_attrs=["command"])


def _written_markers(store):
    directory = os.path.join(store, "chunk_stats", "c")
    return len(os.listdir(directory)) if os.path.isdir(directory) else 0


def test_a_conversion_killed_at_any_moment_resumes_to_an_identical_store(tmp_path):
    run_cli("simulate", "-o", tmp_path / "sim", "--n", 3000, "--box", 32, "-q")
    star = str(tmp_path / "sim" / "particles.star")
    args = ["convert", star, "--chunk-images", "8", "-q"]
    run_cli(*args, "-o", tmp_path / "whole.zarr")
    killed = str(tmp_path / "killed.zarr")
    for round_ in range(3):  # kill three times at different moments, then let it finish
        process = subprocess.Popen([*HETREC, *args, "-o", killed])
        deadline = time.time() + 60
        while _written_markers(killed) < 20 * (round_ + 1) and process.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert 0 < _written_markers(killed) < 375, "the kill did not interrupt the conversion"
        assert not zarr.open_group(killed, mode="r").attrs["complete"]
        with pytest.raises(UserError, match="did not finish"):
            open_store(killed)
    subprocess.run([*HETREC, *args, "-o", killed], check=True, timeout=120)
    assert_same_store(tmp_path / "whole.zarr", killed, ignore_attrs=["command"])  # -o differs


def test_a_damaged_unfinished_chunk_is_rewritten(sim_dir, sim_store, tmp_path):
    store = tmp_path / "p.zarr"
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", store, "--chunk-images", 32, "-q")
    group = zarr.open_group(store, mode="r+")
    group.attrs["complete"] = False
    group["chunk_stats"][3] = np.nan
    (store / "images" / "c" / "3" / "0" / "0").write_bytes(b"truncated")
    (store / "chunk_stats" / "c" / "5" / "0").write_bytes(b"xx")  # a marker cut short by a kill
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", store, "--chunk-images", 32, "-q")
    assert_same_store(sim_store, store, ignore_attrs=["command"])


def test_an_unfinished_store_of_other_inputs_is_not_resumed(sim_dir, tmp_path):
    store = tmp_path / "p.zarr"
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", store, "-q")
    zarr.open_group(store, mode="r+").attrs["complete"] = False
    result = run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", store, "--box", 16, expect_ok=False)
    assert_one_line_error(result, "unfinished conversion", "box was 32, now 16", "--overwrite")
