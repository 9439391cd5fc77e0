"""The faults real machines produce: nothing lost, nothing silently wrong, nothing hung (docs/faults.md).
Each fault is injected here: bytes overwritten, files removed, values a config should not hold."""

import os
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli

TINY = ["--batch-size", 64, "--zdim", 2, "--n-basis", 3, "--device", "cpu", "-q"]


@pytest.fixture
def small_chunks_store(sim_dir, tmp_path):
    """The simulated particles in chunks of 32 images (chunk 3 holds particles 96 to 127)."""
    store = tmp_path / "p.zarr"
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", store, "--chunk-images", 32, "-q")
    return store


def chunk_file(store, chunk):
    return store / "images" / "c" / str(chunk) / "0" / "0"


def overwrite_middle(path, n_bytes, seed=0):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 - n_bytes // 2
    data[middle:middle + n_bytes] = np.random.default_rng(seed).bytes(n_bytes)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["random bytes", "missing file", "broken header"])
def test_a_damaged_or_missing_chunk_is_never_read_as_data(small_chunks_store, tmp_path, damage):
    target = chunk_file(small_chunks_store, 3)
    if damage == "random bytes":
        overwrite_middle(target, min(4096, target.stat().st_size // 2))
    elif damage == "missing file":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[:16] = b"\xff" * 16
        target.write_bytes(bytes(data))
    result = run_cli("train", small_chunks_store, "-o", tmp_path / "run", "--epochs", 1, *TINY, expect_ok=False)
    assert_one_line_error(result, "p.zarr", "images chunk 3 (particles 96 to 127)", "--overwrite")
    result = run_cli("inspect", small_chunks_store, "--verify", expect_ok=False)
    assert result.exit_code == 1
    assert "1 of 10 chunks are damaged or missing: chunk 3 (particles 96 to 127)" in result.output
    assert "Traceback" not in result.output


def test_verify_passes_a_whole_store_and_a_store_copied_elsewhere(small_chunks_store, tmp_path):
    shutil.copytree(small_chunks_store, tmp_path / "copy.zarr")
    for store in (small_chunks_store, tmp_path / "copy.zarr"):
        result = run_cli("inspect", store, "--verify")
        assert "verified 10 chunks: each holds what was written" in result.output


@pytest.mark.parametrize("setting,value,what", [
    ("zdim", 0, "a latent dimension of at least 1"), ("n_basis", 0, "a number of basis volumes"),
    ("batch_size", 0, "a number of images"), ("epochs", 0, "a number of epochs of at least 1"),
    ("lr", -1.0, "a positive learning rate"), ("lr_basis", ".nan", "a positive learning rate"),
    ("max_radius", 0.7, "(0, 0.5]"), ("seed", -3, "a seed of 0 or more"),
])
def test_values_from_a_yaml_config_are_checked_like_options(sim_store, tmp_path, setting, value, what):
    (tmp_path / "bad.yaml").write_text(f"{setting}: {value}\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "run", "--config", tmp_path / "bad.yaml", "-q",
                     expect_ok=False)
    assert_one_line_error(result, f"setting {setting}:", what)
    assert not (tmp_path / "run").exists()
