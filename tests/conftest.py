import faulthandler
import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import zarr
from click.testing import CliRunner

from hetrec_dist.cli import main
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.dataset import simulate_dataset

# DeepSpeed's shared-memory kernel is built once for this virtual environment, in a folder of the tests' own
# (inherited by every rank they start): a build lock there was left by an interrupted test run, and goes now
# rather than after the BUILD_LOCK_STALE_S that a training run waits. Only in pytest's own process: the ranks a
# test spawns import this module too, and one of them removing the lock of the other, which was building the
# kernel on a fresh environment, broke that build (seen on a fresh clone).
os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")
if mp.current_process().name == "MainProcess":
    for stale_lock in glob.glob(os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], "*", "lock")):
        os.remove(stale_lock)


def run_cli(*args, expect_ok=True):
    """Run `hetrec ARGS` in-process; returns the click Result."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def free_port():
    """A TCP port on localhost that nobody listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, worker, args, out_dir, timeout_s):
    faulthandler.dump_traceback_later(timeout_s, exit=True)  # a hung rank prints its stacks and exits 1
    torch.save(worker(rank, *args), os.path.join(out_dir, f"rank{rank}.pt"))


def run_ranks(worker, *args, out_dir, nprocs=2, timeout_s=300):
    """[worker(rank, *args) for each rank], each rank in its own spawned process; a rank still running after
    timeout_s fails the test (with its stacks on stderr) instead of hanging the suite. Results come back
    through files, not a multiprocessing Manager: that is a server forked from this process, whose other
    threads (zarr's event loop, torch's pool) may hold a lock the fork then waits on."""
    context = mp.start_processes(_rank_main, args=(worker, args, str(out_dir), timeout_s), nprocs=nprocs,
                                 start_method="spawn", join=False)
    deadline = time.monotonic() + timeout_s + 30
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{nprocs} ranks of {worker.__name__} ran past {timeout_s} s")
    return [torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False) for rank in range(nprocs)]


def run_bounded(command, timeout_s=300, env=None):
    """subprocess.run(command) with its output captured, for a command that starts more processes (a launcher
    and its ranks): past timeout_s its whole process group is killed and the test fails. The output goes
    through files, not pipes, which a surviving rank could hold open and so block the wait."""
    command = [str(part) for part in command]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stdout.seek(0), stderr.seek(0)
        result = subprocess.CompletedProcess(command, process.returncode, stdout.read(), stderr.read())
    if timed_out:
        pytest.fail(f"ran past {timeout_s} s: {' '.join(command)}\n{result.stdout}{result.stderr}")
    return result


def assert_one_line_error(result, *fragments):
    """A user error: exit status 1, one line starting 'Error:', naming each fragment, and no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


def store_contents(path):
    """Every array and the attrs of a store, for comparing two stores exactly."""
    group = zarr.open_group(path, mode="r")
    return {name: array[:] for name, array in group.arrays()}, group.attrs.asdict()


def assert_same_store(a, b, ignore_attrs=()):
    arrays_a, attrs_a = store_contents(a)
    arrays_b, attrs_b = store_contents(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    for key in ignore_attrs:
        attrs_a.pop(key, None), attrs_b.pop(key, None)
    assert attrs_a == attrs_b


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """A small simulated dataset: 300 particles, box 32, three stacks."""
    out = str(tmp_path_factory.mktemp("sim") / "sim")
    simulate_dataset(out, hinge_model(), n=300, box=32, snr=0.5, seed=3, images_per_stack=128, show_progress=False)
    return out


@pytest.fixture(scope="session")
def sim_store(sim_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("store") / "particles.zarr")
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", out, "--chunk-images", "32", "-q")
    return out


@pytest.fixture(scope="session")
def two_epoch_run(sim_store, tmp_path_factory):
    """A run of 2 epochs on sim_store, tiny settings; tests that change it work on a copy."""
    run = tmp_path_factory.mktemp("two_epochs") / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 2, "--batch-size", 64, "--zdim", 2, "--n-basis", 3,
            "--device", "cpu", "-q")
    return run
