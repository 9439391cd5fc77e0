"""The faults real machines produce: nothing lost, nothing silently wrong, nothing hung (docs/faults.md).
Each fault is injected here: bytes overwritten, files removed, values a config should not hold."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import assert_one_line_error, run_bounded, run_cli

from hetrec_dist.data.store import open_store
from hetrec_dist.train.checkpoint import load_checkpoint

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
    assert "1 of 10 chunks are damaged or missing: chunk 3 (particles 96 to 127): " in result.output
    reason = result.output.split("chunk 3 (particles 96 to 127): ")[1]
    assert reason.startswith(("cannot be read (", "does not hold what was written (")), reason
    assert result.output.count("--overwrite") == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("lost,what", [
    ("rotations/c/0/0/0", "the pose of particle 0 (300 in all) is not a rotation"),
    ("ctf/c/0/0", "the voltage (kV) of particle 0 (300 in all) is 0, not positive"),
])
def test_a_lost_chunk_of_poses_or_ctf_is_never_read_as_zeros(small_chunks_store, tmp_path, lost, what):
    """zarr reads a missing chunk as its fill value, 0: poses and CTFs of zeros would train without a word."""
    (small_chunks_store / lost).unlink()
    result = run_cli("train", small_chunks_store, "-o", tmp_path / "run", "--epochs", 1, *TINY, expect_ok=False)
    assert_one_line_error(result, "p.zarr", what, "--overwrite")
    assert not (tmp_path / "run" / "checkpoints").exists()
    result = run_cli("inspect", small_chunks_store, "--verify", expect_ok=False)
    assert result.exit_code == 1 and what in result.output and "Traceback" not in result.output


def test_verify_checks_every_chunk_of_a_complete_store_even_one_whose_record_is_lost(small_chunks_store):
    """A complete store whose chunk 3 lost its recorded statistics: training refuses that chunk, so must
    --verify."""
    (small_chunks_store / "chunk_stats" / "c" / "3" / "0").unlink()
    result = run_cli("inspect", small_chunks_store, "--verify", expect_ok=False)
    assert result.exit_code == 1
    assert "1 of 10 chunks are damaged or missing: chunk 3 (particles 96 to 127)" in result.output


def test_verify_passes_a_whole_store_and_a_store_copied_elsewhere(small_chunks_store, tmp_path):
    shutil.copytree(small_chunks_store, tmp_path / "copy.zarr")
    for store in (small_chunks_store, tmp_path / "copy.zarr"):
        result = run_cli("inspect", store, "--verify")
        assert "verified 10 chunks: each holds what was written" in result.output


@pytest.mark.parametrize("setting,value,what", [
    ("zdim", 0, "a latent dimension of at least 1"), ("n_basis", 0, "a number of basis volumes"),
    ("batch_size", 0, "a number of images"), ("epochs", 0, "a number of epochs of at least 1"),
    ("lr", -1.0, "a positive learning rate"), ("lr_basis", ".nan", "a positive learning rate"),
    ("max_resolution_A", -4, "a positive resolution"), ("seed", -3, "a seed of 0 or more"),
])
def test_values_from_a_yaml_config_are_checked_like_options(sim_store, tmp_path, setting, value, what):
    (tmp_path / "bad.yaml").write_text(f"{setting}: {value}\n")
    result = run_cli("train", sim_store, "-o", tmp_path / "run", "--config", tmp_path / "bad.yaml", "-q",
                     expect_ok=False)
    assert_one_line_error(result, f"setting {setting}:", what)
    assert not (tmp_path / "run").exists()


def _default_ctrl_c():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def hetrec_process(*args):
    """`hetrec ARGS` as a child process that Ctrl-C (SIGINT) stops, as in a terminal: a test suite started in
    the background (`make test &`, nohup) ignores SIGINT, and a child would inherit that."""
    return subprocess.Popen([sys.executable, "-m", "hetrec_dist.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_ctrl_c)


def wait_for(path, process, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), process.communicate() if process.poll() is not None else f"no {path} in {timeout_s} s"


def test_a_live_run_is_never_replaced_or_resumed_and_a_dead_ones_lock_is_taken_over(sim_store, tmp_path):
    run = tmp_path / "run"
    live = hetrec_process("train", sim_store, "-o", run, "--epochs", 1000, *TINY[:-1])
    try:
        wait_for(run / "checkpoints" / "last.pt", live)
        for extra in (("--overwrite",), ("--resume",), ()):
            result = run_cli("train", sim_store, "-o", run, *extra, *TINY, expect_ok=False)
            if extra:
                assert_one_line_error(result, str(run), f"in use by process {live.pid} on", "training run")
            else:
                assert_one_line_error(result, "already exists", "--resume")
        assert live.poll() is None and (run / "config.yaml").exists()
    finally:
        live.kill()
        live.wait()
    epoch = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", epoch + 1, "-q")  # the kernel freed its lock
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == epoch + 1


def test_a_store_being_converted_is_not_overwritten(tmp_path):
    run_cli("simulate", "-o", tmp_path / "sim", "--n", 3000, "--box", 32, "-q")
    star, store = tmp_path / "sim" / "particles.star", tmp_path / "p.zarr"
    live = hetrec_process("convert", star, "-o", store, "--chunk-images", 4, "-q")
    try:
        wait_for(store / "zarr.json", live)
        result = run_cli("convert", star, "-o", store, "--overwrite", "-q", expect_ok=False)
        assert_one_line_error(result, "p.zarr", f"in use by process {live.pid}", "particle store")
        assert live.wait(timeout=120) == 0, live.communicate()
    finally:
        live.kill()
    assert open_store(str(store)).attrs["complete"] and not (store / ".hetrec.lock").exists()


def test_latents_of_another_checkpoint_are_refused(two_epoch_run, sim_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    record = json.loads((run / "z.json").read_text())
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert {name: record[name] for name in ("epoch", "step", "n_particles", "run_id", "store_sha256")} == {
        "epoch": 2, "step": checkpoint["step"], "n_particles": 300, "run_id": checkpoint["run_id"],
        "store_sha256": checkpoint["store_sha256"]}
    (run / "z.json").write_text(json.dumps({**record, "epoch": 1, "step": 3}))  # a resume killed after its checkpoint
    gt = os.path.join(sim_dir, "ground_truth")
    for command in (["analyze", run, "--k", 2], ["eval", run, "--gt", gt]):
        assert_one_line_error(run_cli(*command, expect_ok=False), "z.npy holds the latents of epoch 1",
                              "model is that of epoch 2", "hetrec embed")
    run_cli("embed", run)
    assert json.loads((run / "z.json").read_text())["epoch"] == 2
    run_cli("eval", run, "--gt", gt)


def test_ground_truth_of_other_particles_is_refused(two_epoch_run, tmp_path):
    run_cli("simulate", "-o", tmp_path / "other", "--n", 300, "--box", 32, "--seed", 9, "-q")
    before = sorted(os.listdir(two_epoch_run))
    result = run_cli("eval", two_epoch_run, "--gt", tmp_path / "other" / "ground_truth", expect_ok=False)
    assert_one_line_error(result, "ground truth of other particles")
    assert sorted(os.listdir(two_epoch_run)) == before  # no eval.json overwritten


def test_maps_of_nan_latents_are_refused(two_epoch_run, tmp_path):
    (tmp_path / "z.txt").write_text("0.1 0.2\nnan 0.0\n")
    result = run_cli("volume", two_epoch_run, "--z", tmp_path / "z.txt", "-o", tmp_path / "maps", expect_ok=False)
    assert_one_line_error(result, "z.txt", "row 2", "finite")
    assert not (tmp_path / "maps").exists()


def in_small_tmpfs(folder, size, *command):
    """Run `hetrec COMMAND` with a tmpfs of `size` mounted at `folder` (a private mount namespace), and copy what
    it left there to FOLDER.after; skips the test where mounting needs rights this machine does not give."""
    mount = f"mount -t tmpfs -o size={size} tmpfs {folder}"
    os.makedirs(folder, exist_ok=True)
    if run_bounded(["unshare", "--mount", "sh", "-c", mount], timeout_s=30).returncode != 0:
        pytest.skip("mounting a small tmpfs needs unshare and root")
    hetrec = [sys.executable, "-m", "hetrec_dist.cli", *map(str, command)]
    script = f'{mount} && "$@"; status=$?; rm -rf {folder}.after; cp -a {folder} {folder}.after; exit $status'
    return run_bounded(["unshare", "--mount", "sh", "-c", script, "sh", *hetrec], timeout_s=240)


def one_error_line(result):
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stdout + result.stderr
    return lines[0]


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(sim_dir, sim_store, tmp_path):
    line = one_error_line(in_small_tmpfs(tmp_path / "small", "600k", "convert",
                                         os.path.join(sim_dir, "particles.star"), "-o", tmp_path / "small" / "p.zarr",
                                         "-q"))
    assert "no space left on device while writing" in line and "p.zarr" in line
    run = tmp_path / "small" / "run"
    line = one_error_line(in_small_tmpfs(tmp_path / "small", "2m", "train", sim_store, "-o", run, "--epochs", 1,
                                         *TINY))
    assert line.startswith("Error: no space left on device while writing") and "checkpoints/epoch_0001" in line
    after = tmp_path / "small.after"
    assert not list(after.glob("**/*.tmp-*")) and not list(after.glob("run/checkpoints/*.pt"))
    assert "stopped: no space left on device" in (after / "run" / "train.log").read_text()


def test_what_killed_writes_left_is_cleared_at_the_next_start(two_epoch_run, sim_store, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    for left in (run / "checkpoints" / "last.pt.tmp-4242", run / "z.npy.tmp-4242"):  # hetrec 0.1's temporaries
        left.write_bytes(b"half a file")
    (run / "checkpoints" / "last.pt.tmp-4243-k2x9").mkdir()  # today's: a private folder
    (run / "checkpoints" / "last.pt.tmp-4243-k2x9" / "last.pt").write_bytes(b"half a file")
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q")
    assert not list(run.glob("**/*.tmp-*"))
    assert "removed 3 unfinished file(s) a stopped run left" in (run / "train.log").read_text()


def test_a_resumed_run_keeps_its_command_history_and_says_what_a_preset_changes(two_epoch_run, sim_store, tmp_path):
    import yaml

    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    first = yaml.safe_load((run / "config.yaml").read_text())
    (tmp_path / "preset.yaml").write_text("lr: 0.005\nbeta: 1.0\n")
    result = run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "--config", tmp_path / "preset.yaml",
                     "-q")
    warned = [line for line in result.output.splitlines() if line.startswith("Warning: ")]
    assert len(warned) == 1 and "changes the resumed run's lr from 0.001 to 0.005" in warned[0]
    resumed = yaml.safe_load((run / "config.yaml").read_text())
    assert resumed["earlier_commands"] == [first["command"]] and "--resume" in resumed["command"]
    assert resumed["zdim"] == first["zdim"] == 2  # a setting the preset does not name stays the run's


def test_inspect_of_an_unfinished_store_counts_the_chunks_written(small_chunks_store):
    import zarr

    from hetrec_dist.data.summary import store_summary

    whole = store_summary(str(small_chunks_store))["compression"]["ratio"]
    group = zarr.open_group(small_chunks_store, mode="r+")
    group.attrs["complete"] = False
    for chunk in range(5, 10):
        group["chunk_stats"][chunk] = np.nan
        chunk_file(small_chunks_store, chunk).unlink()
    partial = store_summary(str(small_chunks_store))
    assert partial["chunks_written"] == "5/10" and abs(partial["compression"]["ratio"] - whole) < 0.05 * whole


def launch(*args):
    return [sys.executable, "-m", "hetrec_dist.cli", "launch", *map(str, args)]


def error_lines(result):
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error: ")]


@pytest.mark.multirank
def test_a_busy_port_is_one_line_and_jobs_without_a_port_run_side_by_side(sim_store, tmp_path):
    with socket.socket() as busy:  # another job's rendezvous
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = run_bounded(launch("--master-port", port, "--procs-per-node", 2, "--", "train", sim_store,
                                    "-o", tmp_path / "busy", "--epochs", 1, *TINY), timeout_s=180)
        assert result.returncode != 0 and time.monotonic() - started < 180
        lines = error_lines(result)
        assert len(lines) == 1 and f"port {port} of" in lines[0] and "--master-port" in lines[0], lines
        jobs = [subprocess.Popen(launch("--procs-per-node", 2, "--", "train", sim_store, "-o", tmp_path / name,
                                        "--epochs", 1, *TINY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True) for name in ("a", "b")]
        try:
            for job in jobs:
                output = job.communicate(timeout=300)[0]
                assert job.returncode == 0, output
        finally:
            for job in jobs:
                if job.poll() is None:
                    os.killpg(job.pid, signal.SIGKILL)
    assert (tmp_path / "a" / "z.npy").exists() and (tmp_path / "b" / "z.npy").exists()


@pytest.mark.multirank
def test_a_rank_killed_under_the_launcher_leaves_the_resume_line_on_the_console_and_in_train_log(sim_store,
                                                                                                  tmp_path):
    import psutil

    run = tmp_path / "run"
    job = subprocess.Popen(launch("--procs-per-node", 2, "--", "train", sim_store, "-o", run, "--epochs", 1000,
                                  *TINY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        wait_for(run / "checkpoints" / "last.pt", job, timeout_s=240)
        ranks = [p for p in psutil.Process(job.pid).children(recursive=True)
                 if p.cmdline()[1:5] == ["-u", "-m", "hetrec_dist.cli", "train"]]
        assert len(ranks) == 2, [p.cmdline() for p in ranks]
        ranks[1].kill()
        output = job.communicate(timeout=120)[0]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    assert f"continue from the last checkpoint in {run}/checkpoints" in output, output
    assert "stopped:" in (run / "train.log").read_text() and "--resume" in (run / "train.log").read_text()


def test_a_run_on_a_downsampled_store_is_evaluated_against_the_full_size_ground_truth(sim_dir, tmp_path):
    """The maps of the simulation (box 32, 4 Å) are Fourier-cropped to the run's box (16, 8 Å) to compare;
    a ground truth of another field of view is one line, before training."""
    run_cli("convert", os.path.join(sim_dir, "particles.star"), "-o", tmp_path / "small.zarr", "--box", 16, "-q")
    gt = os.path.join(sim_dir, "ground_truth")
    run_cli("train", tmp_path / "small.zarr", "-o", tmp_path / "run", "--epochs", 2, "--gt", gt, *TINY)
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert len(result["maps"]) == 5 and result["mean_fsc"] > 0.5
    record = json.loads(open(os.path.join(gt, "ground_truth.json")).read())
    shutil.copytree(gt, tmp_path / "gt")
    (tmp_path / "gt" / "ground_truth.json").write_text(json.dumps({**record, "pixel_size_A": 3.0}))
    result = run_cli("train", tmp_path / "small.zarr", "-o", tmp_path / "run2", "--gt", tmp_path / "gt", *TINY,
                     expect_ok=False)
    assert_one_line_error(result, "not the same field of view")
    assert not (tmp_path / "run2").exists()


def test_resuming_a_finished_run_says_so_and_changes_nothing(two_epoch_run, sim_store, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "z.npy")}
    result = run_cli("train", sim_store, "-o", run, "--resume", "-q", "--epochs", 2, expect_ok=False)
    assert_one_line_error(result, "has trained 2 epochs already", "--epochs above 2")
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_conversion_stopped_with_ctrl_c_says_how_to_resume(tmp_path):
    run_cli("simulate", "-o", tmp_path / "sim", "--n", 3000, "--box", 32, "-q")
    store = tmp_path / "p.zarr"
    live = hetrec_process("convert", tmp_path / "sim" / "particles.star", "-o", store, "--chunk-images", 4, "-q")
    wait_for(store / "chunk_stats" / "c", live)
    live.send_signal(signal.SIGINT)
    _, stderr = live.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert live.returncode == 1 and len(lines) == 1, stderr
    assert "unfinished: run the same command again to resume" in lines[0]


def in_read_only_folder(folder, *command):
    """Run `hetrec COMMAND` with a read-only tmpfs mounted at `folder` (a private mount namespace: root writes
    into a chmod-ed folder anyway); skips where mounting needs rights this machine does not give."""
    mount = f"mount -t tmpfs -o ro,size=1m tmpfs {folder}"
    os.makedirs(folder, exist_ok=True)
    if run_bounded(["unshare", "--mount", "sh", "-c", mount], timeout_s=30).returncode != 0:
        pytest.skip("mounting a tmpfs needs unshare and root")
    hetrec = [sys.executable, "-m", "hetrec_dist.cli", *map(str, command)]
    return run_bounded(["unshare", "--mount", "sh", "-c", f'{mount} && exec "$@"', "sh", *hetrec], timeout_s=240)


def test_a_read_only_destination_is_one_line_naming_it(two_epoch_run, sim_dir, tmp_path):
    ro = tmp_path / "ro"
    (tmp_path / "z.txt").write_text("0 0\n")
    for command in (("volume", two_epoch_run, "--z", tmp_path / "z.txt", "-o", ro / "maps"),
                    ("embed", two_epoch_run, "-o", ro / "z.npy"),
                    ("simulate", "-o", ro / "sim", "--n", 20, "--box", 32, "-q"),
                    ("convert", os.path.join(sim_dir, "particles.star"), "-o", ro / "p.zarr", "-q")):
        line = one_error_line(in_read_only_folder(ro, *command))
        assert str(ro) in line and "Read-only file system" in line, (command, line)
    run = tmp_path / "run"  # eval writes into the run itself
    shutil.copytree(two_epoch_run, run)
    line = one_error_line(in_read_only_folder(run / "eval_maps", "eval", run, "--gt",
                                              os.path.join(sim_dir, "ground_truth"), "--device", "cpu"))
    assert "eval_maps" in line and "Read-only file system" in line, line


# Runs `hetrec ARGS` with the address space limited (RLIMIT_AS) to what the process holds once training starts,
# plus 16 MiB: start-up passes, and what training needs on top (300 images x 17 volumes a step, the latents of
# every particle at the end) does not fit.
_LIMITED_TRAINING = """
import re, resource, runpy, sys
from hetrec_dist.train import trainer
steps = trainer.Trainer._train_steps
def limited(self, *args):
    held = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (held + 16 * 2 ** 20, resource.RLIM_INFINITY))
    return steps(self, *args)
trainer.Trainer._train_steps = limited
sys.argv[0] = "hetrec"
runpy.run_module("hetrec_dist.cli", run_name="__main__")
"""


def test_training_out_of_memory_is_one_line_with_what_to_lower_and_the_resume_hint(sim_store, tmp_path):
    run = tmp_path / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 1, "--batch-size", 300, "--n-basis", 16, "--device", "cpu",
            "-q")
    result = run_bounded([sys.executable, "-c", _LIMITED_TRAINING, "train", sim_store, "-o", run, "--resume",
                          "--epochs", 2, "-q"], timeout_s=300)
    line = one_error_line(result)
    assert "out of host memory while training" in line and "--batch-size (now 300)" in line, line
    assert f"continue from the last checkpoint in {run}/checkpoints with --resume" in line, line
    assert "stopped: out of host memory" in (run / "train.log").read_text()


@pytest.mark.parametrize("n", [1, 3])
def test_a_store_too_small_to_learn_from_is_refused_at_the_start(tmp_path, n):
    run_cli("simulate", "-o", tmp_path / "sim", "--n", n, "--box", 32, "-q")
    run_cli("convert", tmp_path / "sim" / "particles.star", "-o", tmp_path / "p.zarr", "-q")
    result = run_cli("train", tmp_path / "p.zarr", "-o", tmp_path / "run", *TINY, expect_ok=False)
    assert_one_line_error(result, f"holds {n} particle(s)", "at least 10")
    assert not (tmp_path / "run").exists()


def test_a_damaged_last_checkpoint_names_the_epoch_file_to_resume_from(sim_store, tmp_path):
    run = tmp_path / "run"
    run_cli("train", sim_store, "-o", run, "--epochs", 2, "--config", _every_epoch(tmp_path), *TINY)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a truncated write
    result = run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q", expect_ok=False)
    assert_one_line_error(result, "last.pt: not a readable checkpoint", "epoch_0002.pt", "--checkpoint")
    run_cli("train", sim_store, "-o", run, "--resume", "--checkpoint", run / "checkpoints" / "epoch_0001.pt",
            "--epochs", 3, "-q")
    assert load_checkpoint(last)["epoch"] == 3
    other = tmp_path / "elsewhere.pt"
    shutil.copyfile(run / "checkpoints" / "epoch_0001.pt", other)
    result = run_cli("train", sim_store, "-o", run, "--resume", "--checkpoint", other, "--epochs", 4, "-q",
                     expect_ok=False)
    assert_one_line_error(result, "not one of", "a run continues from its own checkpoints")


def _every_epoch(tmp_path):
    (tmp_path / "every.yaml").write_text("checkpoint_every: 1\n")
    return tmp_path / "every.yaml"


def test_volume_never_mixes_the_maps_of_two_runs_in_one_folder(two_epoch_run, tmp_path):
    (tmp_path / "three.txt").write_text("0 0\n1 1\n2 2\n")
    (tmp_path / "one.txt").write_text("0 0\n")
    run_cli("volume", two_epoch_run, "--z", tmp_path / "three.txt", "-o", tmp_path / "maps", "--device", "cpu")
    result = run_cli("volume", two_epoch_run, "--z", tmp_path / "one.txt", "-o", tmp_path / "maps", expect_ok=False)
    assert_one_line_error(result, "holds 3 maps of an earlier run", "--overwrite")
    run_cli("volume", two_epoch_run, "--z", tmp_path / "one.txt", "-o", tmp_path / "maps", "--overwrite",
            "--device", "cpu")
    assert sorted(os.listdir(tmp_path / "maps")) == ["vol_000.mrc"]


def test_a_run_being_read_is_not_overwritten(two_epoch_run, sim_store, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time; from hetrec_dist.data.folder_lock import "
                               "hold_for_reading; hold_for_reading(sys.argv[1]); print('held', flush=True); "
                               "time.sleep(600)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "held"
        result = run_cli("train", sim_store, "-o", run, "--overwrite", *TINY, expect_ok=False)
        assert_one_line_error(result, "is being read by another hetrec command", "wait for it")
        assert (run / "z.npy").exists()
        run_cli("train", sim_store, "-o", run, "--resume", "--epochs", 3, "-q")  # resuming replaces nothing
    finally:
        reader.kill()
        reader.wait()
    run_cli("train", sim_store, "-o", run, "--overwrite", "--epochs", 1, *TINY)
