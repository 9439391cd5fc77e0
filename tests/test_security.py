"""No code from a data file, no file clobbered through a planted link (docs/security.md). Every payload is built
here; a payload that ran would leave its marker file."""

import io
import os
import pickle
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli

from hetrec_dist.data import safe_pickle
from hetrec_dist.data.atomic_files import open_log, write_text
from hetrec_dist.errors import UserError
from hetrec_dist.train.checkpoint import load_checkpoint


class Payload:
    """Unpickled, it would create `marker`: what a hostile file would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (shutil.copyfile, (os.devnull, self.marker))


def test_the_restricted_unpickler_reads_what_cryodrgn_writes_at_every_protocol(tmp_path):
    rotations, translations = np.random.default_rng(0).normal(size=(5, 3, 3)), np.zeros((5, 2), np.float32)
    contents = {"arrays": (rotations, translations), "tensors": (torch.tensor(rotations), torch.tensor(translations)),
                "containers": {"a": [np.float64(1.5), 2, (3, "x")], "b": np.arange(4, dtype=np.int32)},
                "half": np.ones(3, np.float16)}
    for name, value in contents.items():
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            path = tmp_path / f"{name}{protocol}.pkl"
            path.write_bytes(pickle.dumps(value, protocol=protocol))
            read = safe_pickle.load(str(path))
            if name in ("arrays", "tensors"):
                np.testing.assert_array_equal(np.asarray(read[0]), rotations)
                assert type(read[1]) is type(value[1])
            elif name == "containers":
                assert read["a"] == value["a"] and read["b"].dtype == np.int32
            else:
                assert read.dtype == np.float16


@pytest.mark.parametrize("where", ["top", "in a tuple", "in an object array", "inside a tensor's storage"])
def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, where):
    marker = tmp_path / "ran"
    payload = Payload(marker)
    if where == "inside a tensor's storage":  # torch's own reader of a tensor's bytes allows any object
        inner = io.BytesIO()
        torch.save(payload, inner)
        from torch.storage import _load_from_bytes

        class Tensorish:
            def __reduce__(self):
                return (_load_from_bytes, (inner.getvalue(),))
        payload = Tensorish()
    value = {"top": payload, "in a tuple": (np.eye(3)[None], payload),
             "in an object array": np.array([payload, 1], dtype=object)}.get(where, payload)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(value))
    with pytest.raises(UserError, match="evil.pkl: refused") as refused:
        safe_pickle.load(str(tmp_path / "evil.pkl"))
    assert "\n" not in str(refused.value)
    assert not marker.exists()


class _ObjectDtype:
    """numpy.dtype('O8') with a version-3 state whose flags are 0: numpy then no longer treats it as holding
    objects, and numpy's scalar() reads 8 bytes of the file as a pointer to a Python object (which the pickle
    can then call): a segfault, or code run where the address is known (ASLR off)."""

    def __reduce__(self):
        return (np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))


class _NumericDtypeMadeObject:
    """A numeric dtype whose pickled state claims more (fields, another size, flags)."""

    def __reduce__(self):
        return (np.dtype, ("f8", False, True), (3, "<", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63))


class _PointerScalar:
    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        return (np.float64(0).__reduce__()[0], (self.dtype, struct.pack("<Q", 0x4141414141414141)))


@pytest.mark.parametrize("dtype", [_ObjectDtype(), _NumericDtypeMadeObject()])
def test_a_pickled_dtype_can_never_turn_bytes_into_object_pointers(tmp_path, dtype):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps((_PointerScalar(dtype),), protocol=2))
    result = subprocess.run([sys.executable, "-c", "import sys; from hetrec_dist.data import safe_pickle; "
                             "safe_pickle.load(sys.argv[1])", str(tmp_path / "evil.pkl")], capture_output=True,
                            text=True, timeout=120)  # a crash must not take the test run with it
    assert result.returncode == 1 and "UserError" in result.stderr and "evil.pkl: refused" in result.stderr, (
        result.returncode, result.stderr[-2000:])
    big_endian = np.arange(4, dtype=">f8")  # what the state legitimately carries: the byte order
    (tmp_path / "be.pkl").write_bytes(pickle.dumps(big_endian, protocol=2))
    np.testing.assert_array_equal(safe_pickle.load(str(tmp_path / "be.pkl")), big_endian)


def test_convert_refuses_a_poses_or_ctf_pickle_that_would_run_code(sim_dir, tmp_path):
    stack = os.path.join(sim_dir, "stacks", "particles_0000.mrcs")  # 128 images
    marker = tmp_path / "ran"
    good_poses = (np.tile(np.eye(3), (128, 1, 1)), np.zeros((128, 2)))
    ctf = np.tile([32, 1.0, 10000, 10000, 0, 300, 2.7, 0.1, 0], (128, 1))
    (tmp_path / "poses.pkl").write_bytes(pickle.dumps(good_poses))
    (tmp_path / "ctf.pkl").write_bytes(pickle.dumps(ctf))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps((good_poses[0], Payload(marker))))
    for poses, ctf in (("evil.pkl", "ctf.pkl"), ("poses.pkl", "evil.pkl")):
        result = run_cli("convert", stack, "--poses", tmp_path / poses, "--ctf", tmp_path / ctf,
                         "-o", tmp_path / "p.zarr", "-q", expect_ok=False)
        assert_one_line_error(result, "evil.pkl", "refused", "shutil.copyfile")
        assert not marker.exists()


class SystemPayload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_checkpoint_carrying_a_payload_is_refused_by_every_reader(two_epoch_run, sim_store, tmp_path):
    marker = tmp_path / "ran"
    state = torch.load(two_epoch_run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**state, "extra": SystemPayload()}, tmp_path / "system.pt")  # a module torch blocks outright
    with pytest.raises(UserError, match=r"system.pt: refused, the checkpoint would call (posix|os)\.system"):
        load_checkpoint(str(tmp_path / "system.pt"))
    state["extra"] = Payload(marker)
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="evil.pt: refused, the checkpoint would call shutil.copyfile"):
        load_checkpoint(str(tmp_path / "evil.pt"))
    for command in (("volume", two_epoch_run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps"),
                    ("embed", two_epoch_run, "-o", tmp_path / "z.npy")):
        (tmp_path / "z.txt").write_text("0 0\n")
        result = run_cli(*command, "--checkpoint", tmp_path / "evil.pt", expect_ok=False)
        assert_one_line_error(result, "evil.pt", "refused")
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    shutil.copyfile(tmp_path / "evil.pt", run / "checkpoints" / "last.pt")
    for command in (("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q"),
                    ("analyze", run, "--k", 2)):
        assert_one_line_error(run_cli(*command, expect_ok=False), "last.pt", "refused")
    assert not marker.exists()


@pytest.mark.parametrize("content", [{"a": 1}, {"model": {}, "optimizer": {}}, [torch.zeros(2)], torch.zeros(3)])
def test_a_torch_file_that_is_not_a_hetrec_checkpoint_is_one_line(two_epoch_run, tmp_path, content):
    torch.save(content, tmp_path / "weights.pkl")
    (tmp_path / "z.txt").write_text("0 0\n")
    for command in (("volume", two_epoch_run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps"),
                    ("embed", two_epoch_run, "-o", tmp_path / "z.npy"),
                    ("fsc", two_epoch_run, "--z", tmp_path / "z.txt"),
                    ("eval", two_epoch_run, "--gt", tmp_path)):
        result = run_cli(*command, "--checkpoint", tmp_path / "weights.pkl", expect_ok=False)
        assert_one_line_error(result, "weights.pkl", "not a hetrec checkpoint")


def test_a_lock_planted_as_a_link_is_refused_and_its_target_untouched(two_epoch_run, sim_dir, sim_store, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's own file\n")
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    (run / ".hetrec.lock").unlink(missing_ok=True)  # a finished run's lock file stays; the attacker replaces it
    (run / ".hetrec.lock").symlink_to(precious)
    result = run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q", expect_ok=False)
    assert_one_line_error(result, ".hetrec.lock", "symbolic link")
    (tmp_path / "p.zarr").mkdir()
    (tmp_path / "p.zarr" / ".hetrec.lock").symlink_to(precious)
    result = run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", tmp_path / "p.zarr", "--overwrite",
                     "-q", expect_ok=False)
    assert_one_line_error(result, ".hetrec.lock", "symbolic link")
    assert precious.read_text() == "a user's own file\n"


def test_files_are_written_in_place_of_a_planted_link_never_through_it(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's own file\n")
    out = tmp_path / "out.json"
    out.symlink_to(precious)
    for pid in (os.getpid(), os.getpid() + 1):  # where the temporaries of hetrec 0.1 were written
        (tmp_path / f"out.json.tmp-{pid}").symlink_to(precious)
    write_text(str(out), "{}")
    assert not out.is_symlink() and out.read_text() == "{}"
    assert precious.read_text() == "a user's own file\n"
    log = tmp_path / "train.log"
    log.symlink_to(precious)
    with pytest.raises(OSError):
        open_log(str(log))
    assert precious.read_text() == "a user's own file\n"


def test_a_run_hetrec_0_1_trained_on_two_ranks_still_loads_and_resumes(sim_dir, tmp_path):
    """tests/data/hetrec01_two_rank_run: DeepSpeed's engine checkpoint as hetrec 0.1 (commit 9422200) wrote it,
    trained 1 epoch on 2 ranks on this suite's simulation at box 16. It holds tensors and plain values only, so
    torch.load(weights_only=True) reads it as before."""
    store = tmp_path / "store16.zarr"
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", store, "--box", 16, "-q")
    run = tmp_path / "run"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "hetrec01_two_rank_run"), run)
    config = (run / "config.yaml").read_text().replace("store: /tmp/store16.zarr", f"store: {store}")
    (run / "config.yaml").write_text(config)
    state = load_checkpoint(str(run / "checkpoints" / "epoch_0001"))
    assert state["epoch"] == 1 and state["model_shape"]["box"] == 16 and "dense_optimizer" in state
    (tmp_path / "z.txt").write_text("0 0\n")
    run_cli("volume", run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps", "--device", "cpu")
    run_cli("train", store, "-o", run, "--resume", "--epochs", 2, "--device", "cpu", "-q")
    assert load_checkpoint(str(run / "checkpoints" / "last.pt"))["epoch"] == 2


def test_folders_planted_as_links_are_never_written_through(two_epoch_run, sim_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "vol_005.mrc").write_text("the victim's own map\n")
    (victim / "decoded_00.mrc").write_text("the victim's own map\n")
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    shutil.rmtree(run / "eval_maps", ignore_errors=True)
    (run / "eval_maps").symlink_to(victim)
    result = run_cli("eval", run, "--gt", os.path.join(sim_dir, "ground_truth"), "--device", "cpu", expect_ok=False)
    assert_one_line_error(result, "eval_maps is a symbolic link")
    (tmp_path / "maps").symlink_to(victim)
    (tmp_path / "z.txt").write_text("0 0\n")
    result = run_cli("volume", run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps", "--overwrite",
                     expect_ok=False)
    assert_one_line_error(result, "maps is a symbolic link")
    (tmp_path / "s.zarr").symlink_to(victim)
    result = run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", tmp_path / "s.zarr", "--overwrite",
                     "-q", expect_ok=False)
    assert_one_line_error(result, "s.zarr is a symbolic link")
    assert sorted(os.listdir(victim)) == ["decoded_00.mrc", "vol_005.mrc"]
    assert all(path.read_text() == "the victim's own map\n" for path in victim.iterdir())


def test_a_train_log_planted_as_a_link_is_one_line(two_epoch_run, sim_store, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's own file\n")
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    (run / "train.log").unlink()
    (run / "train.log").symlink_to(precious)
    result = run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q", expect_ok=False)
    assert_one_line_error(result, "train.log", "symbolic link")
    assert precious.read_text() == "a user's own file\n"


@pytest.mark.parametrize("damage", ["model_shape an int", "model_shape without box", "no epoch", "epoch text",
                                    "negative box", "basis of another shape"])
def test_a_checkpoint_whose_contents_are_not_hetrecs_is_one_line_in_every_reader(two_epoch_run, sim_store, tmp_path,
                                                                               damage):
    state = torch.load(two_epoch_run / "checkpoints" / "last.pt", weights_only=True)
    if damage == "model_shape an int":
        state["model_shape"] = 3
    elif damage == "model_shape without box":
        del state["model_shape"]["box"]
    elif damage == "no epoch":
        del state["epoch"]
    elif damage == "epoch text":
        state["epoch"] = "abc"
    elif damage == "negative box":
        state["model_shape"]["box"] = -5
    else:
        state["model"]["basis"] = torch.zeros(7, 3)
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    torch.save(state, run / "checkpoints" / "last.pt")
    (tmp_path / "z.txt").write_text("0 0\n")
    for command in (("volume", run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps"), ("embed", run),
                    ("analyze", run, "--k", 2, "--no-umap"), ("fsc", run, "--z", tmp_path / "z.txt"),
                    ("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q")):
        result = run_cli(*command, "--device", "cpu", expect_ok=False) if command[0] != "train" else run_cli(
            *command, expect_ok=False)
        assert_one_line_error(result, "last.pt" if damage != "basis of another shape" else "does not match")
