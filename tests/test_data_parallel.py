"""Data-parallel training on 2 real ranks (gloo, on this machine): equal to one rank with the global batch, for
every reduction strategy; started by `hetrec launch` through the deepspeed launcher and mpiexec, and with
srun's variables; a dead rank stops the other; resume on another number of ranks."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, free_port, run_bounded, run_cli, run_ranks

from hetrec_dist.data.reader import ParticleStore, _to_torch
from hetrec_dist.distributed.sparse_reducer import STRATEGIES
from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint
from hetrec_dist.train.config import build_config
from hetrec_dist.train.particle_corrections import ParticleCorrections

GLOBAL_BATCHES = [range(0, 32), range(100, 132), range(200, 220)]  # the last one is partial
RANK_BATCH = 16


class FixedBatches:
    """The trainer's data: these batches, in this order."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def rank_particles(self):
        return sum(len(b["index"]) for b in self.batches)

    def __iter__(self):
        return iter(self.batches)


def batches_of(store_path, rank=None):
    """The global batches (rank None) or rank's part of each: rank 0 the first RANK_BATCH particles."""
    store, parts = ParticleStore(store_path), []
    for particles in GLOBAL_BATCHES:
        if rank is not None:
            particles = particles[:RANK_BATCH] if rank == 0 else particles[RANK_BATCH:]
        parts.append(_to_torch(store.read(particles.start, particles.stop)))
    return parts


def tiny_config(batch_size, strategy="auto", half_sets=False, refine_poses=False):
    return build_config(None, {"batch_size": batch_size, "zdim": 2, "n_basis": 3, "device": "cpu",
                               "basis_reduction": strategy, "collective_timeout_s": 120, "half_sets": half_sets,
                               "refine_poses": refine_poses, "pose_warmup_epochs": 0,
                               "refine_ctf": refine_poses and half_sets, "refine_astigmatism": refine_poses,
                               "ctf_warmup_epochs": 0})


# (strategy, half-sets, pose and CTF refinement): every strategy with one basis; with a basis per half-set, the
# strategy that rebuilds the other ranks' geometry (and so their images' half-sets) and one that sums gradients;
# and pose refinement, and CTF refinement (which needs half-sets) with it, whose corrections each rank keeps for its
# own particles
RANK_RUNS = ([(strategy, False, False) for strategy in STRATEGIES + ("auto",)]
             + [("factors", True, False), ("union", True, False), ("factors", False, True), ("factors", True, True)])


def shared_memory_buffers(port, rank="*"):
    """The names in /dev/shm of DeepSpeed's shared-memory buffers for the run on this port."""
    return glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}")


def rank_environment(rank, world_size, port):
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _rank_worker(rank, port, store_path, run_root):
    from hetrec_dist.distributed.training_world import init_training_world
    from hetrec_dist.train.trainer import Trainer

    os.environ.update(rank_environment(rank, 2, port), LOCAL_SIZE="2")  # as the deepspeed launcher: shared memory
    world = init_training_world(timeout_s=120)
    assert world.shared_memory  # dense and union sum through DeepSpeed's shared memory here
    assert not shared_memory_buffers(port, rank)  # its name is gone from /dev/shm, once both ranks mapped it
    parameters = {}
    for strategy, half_sets, refine in RANK_RUNS:
        trainer = Trainer(store_path, os.path.join(run_root, f"{strategy}_{half_sets}_{refine}"),
                          tiny_config(RANK_BATCH, strategy, half_sets, refine), world, show_progress=False,
                          data=FixedBatches(batches_of(store_path, rank)))
        trainer.train_epoch()
        parameters[strategy, half_sets, refine] = _trained(trainer)
    world.close()
    return parameters


def _trained(trainer):
    """The model's parameters, and the pose and CTF corrections where it refines them."""
    trained = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for refinement in trainer.components:
        if isinstance(refinement, ParticleCorrections):
            trained[refinement.checkpoint_key] = refinement.table.clone()
    return trained


@pytest.fixture(scope="module")
def two_rank_parameters(sim_store, tmp_path_factory):
    """{(rank, strategy, half_sets, refine_poses): the model's parameters (and pose corrections) after the steps}"""
    run_root = tmp_path_factory.mktemp("two_ranks")
    ranks = run_ranks(_rank_worker, free_port(), sim_store, str(run_root), out_dir=run_root)
    return {(rank, *key): parameters for rank, by_run in enumerate(ranks) for key, parameters in by_run.items()}


@pytest.mark.multirank
def test_two_ranks_take_the_steps_of_one_rank_with_the_global_batch(sim_store, two_rank_parameters, tmp_path):
    """Per-rank batch 16 on 2 ranks = batch 32 on 1 rank, over the same particles (3 steps, the last one
    partial: 16 + 4 images), for every way of reducing the basis gradient, with a basis per half-set too, and
    with pose and CTF refinement (each rank's corrections, added up at the epoch's end, are one rank's)."""
    from hetrec_dist.train.trainer import Trainer

    one_rank = {}
    for half_sets, refine in {(half_sets, refine) for _, half_sets, refine in RANK_RUNS}:
        trainer = Trainer(sim_store, tmp_path / f"one_rank_{half_sets}_{refine}",
                          tiny_config(2 * RANK_BATCH, "auto", half_sets, refine),
                          show_progress=False, data=FixedBatches(batches_of(sim_store)))
        initial = _trained(trainer)
        trainer.train_epoch()
        one_rank[half_sets, refine] = initial, _trained(trainer)
    for (rank, strategy, half_sets, refine), parameters in two_rank_parameters.items():
        initial, expected = one_rank[half_sets, refine]
        for name, value in expected.items():
            assert not torch.equal(value, initial[name]), name  # the steps did change every parameter
            where = f"{strategy}, half-sets {half_sets}, pose refinement {refine}, rank {rank}, {name}"
            torch.testing.assert_close(parameters[name], value, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, where=where: f"{where}: {m}")


def hetrec(*args):
    return [sys.executable, "-m", "hetrec_dist.cli", *map(str, args)]


TRAIN_ARGS = ["--epochs", 2, "--batch-size", 32, "--zdim", 2, "--n-basis", 3, "-q"]


def scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [event.value for event in EventAccumulator(str(run / "tb")).Reload().Scalars(tag)]


@pytest.fixture(scope="module")
def launched_runs(sim_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("launched")
    (root / "no_shared_memory.yaml").write_text("shared_memory_sums: false\n")
    runs = {}
    for name, launcher, extra in (("deepspeed", "deepspeed", ()), ("mpirun", "mpirun", ()),
                                  ("gloo", "deepspeed", ("--config", root / "no_shared_memory.yaml"))):
        runs[name] = root / name
        port = free_port()
        result = run_bounded(hetrec("launch", "--launcher", launcher, "--master-port", port, "--procs-per-node", 2,
                                    "--", "train", sim_store, "-o", runs[name], *TRAIN_ARGS, *extra))
        assert result.returncode == 0, result.stdout + result.stderr
        assert not shared_memory_buffers(port)  # the run leaves none of the machine's memory behind
    runs["one_rank"] = root / "one_rank"
    run_cli("train", sim_store, "-o", runs["one_rank"], *TRAIN_ARGS)
    return runs


@pytest.mark.multirank
def test_launch_trains_on_two_ranks_through_deepspeed_and_mpirun(launched_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    deepspeed_run, mpi_run = launched_runs["deepspeed"], launched_runs["mpirun"]
    for run in (deepspeed_run, mpi_run):
        assert scalars(run, "ranks/size") == [2]
        assert scalars(run, "ranks/shared_memory") == [1]  # LOCAL_SIZE set, or found
        assert np.load(run / "z.npy").shape == (300, 2)  # every particle once, from both ranks' shares
        tags = set(EventAccumulator(str(run / "tb")).Reload().Tags()["scalars"])
        assert {"reduce/bytes_sent", "reduce/dense_bytes", "reduce/union_density", "time/reduce_s",
                "perf/images_per_s_per_rank"} <= tags
    # the same ranks, whoever started them: the same run
    np.testing.assert_array_equal(np.load(deepspeed_run / "z.npy"), np.load(mpi_run / "z.npy"))
    # one checkpoint format whatever the number of ranks; z.npy is in store order: the 2-rank model, loaded
    # from its checkpoint into one process, embeds to the same latents
    assert sorted(os.listdir(deepspeed_run / "checkpoints")) == ["epoch_0002.pt", "last.pt"]
    run_cli("embed", deepspeed_run, "-o", deepspeed_run / "z_one_process.npy")
    np.testing.assert_allclose(np.load(deepspeed_run / "z_one_process.npy"), np.load(deepspeed_run / "z.npy"),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.multirank
def test_the_shared_memory_switch_off_sums_through_gloo_to_the_same_bits(launched_runs):
    assert scalars(launched_runs["gloo"], "ranks/shared_memory") == [0]
    np.testing.assert_array_equal(np.load(launched_runs["gloo"] / "z.npy"),
                                  np.load(launched_runs["deepspeed"] / "z.npy"))


@pytest.mark.multirank
def test_srun_variables_start_the_same_ranks(sim_store, launched_runs, tmp_path):
    """What srun gives each task (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID) and what `hetrec launch
    --launcher srun` exports (MASTER_ADDR, MASTER_PORT) make the same 2-rank run."""
    port = free_port()
    tasks = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID=str(rank), SLURM_NTASKS="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        with open(tmp_path / f"task{rank}.log", "w") as log:
            tasks.append(subprocess.Popen(hetrec("train", sim_store, "-o", tmp_path / "srun", *TRAIN_ARGS),
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for rank, task in enumerate(tasks):
            assert task.wait(timeout=300) == 0, (tmp_path / f"task{rank}.log").read_text()
    finally:
        for task in tasks:
            task.kill()  # only a task that is still running: a test that failed leaves nothing behind
    # without SLURM_STEP_NUM_NODES nothing says the ranks share a machine: gloo sums what shared memory summed
    # in the mpirun run, to the same bits
    assert scalars(tmp_path / "srun", "ranks/shared_memory") == [0]
    np.testing.assert_array_equal(np.load(tmp_path / "srun" / "z.npy"), np.load(launched_runs["mpirun"] / "z.npy"))


@pytest.mark.multirank
def test_ranks_sum_through_gloo_where_dev_shm_is_too_small(sim_store, launched_runs, tmp_path):
    """Docker's default /dev/shm (64 MB) cannot hold 2 ranks' buffers of the shared-memory kernel, which dies
    of SIGSEGV there: the run sums through gloo instead, says so, and trains to the same bits."""
    small_shm = "mount -t tmpfs -o size=64m tmpfs /dev/shm"
    if run_bounded(["unshare", "--mount", "sh", "-c", small_shm], timeout_s=30).returncode != 0:
        pytest.skip("mounting a small /dev/shm needs unshare and root")
    port, run = free_port(), tmp_path / "small_shm"
    train = hetrec("launch", "--master-port", port, "--procs-per-node", 2, "--", "train", sim_store, "-o", run,
                   *TRAIN_ARGS)
    result = run_bounded(["unshare", "--mount", "sh", "-c", f'{small_shm} && exec "$@"', "sh", *train])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hint: /dev/shm holds 64 MiB, less than the 132 MiB" in (run / "train.log").read_text()
    assert scalars(run, "ranks/shared_memory") == [0]
    np.testing.assert_array_equal(np.load(run / "z.npy"), np.load(launched_runs["deepspeed"] / "z.npy"))


@pytest.mark.multirank
def test_a_dead_rank_stops_the_other_and_the_run_resumes_on_one_rank(sim_store, tmp_path):
    run, port = tmp_path / "run", free_port()
    ranks = [subprocess.Popen(hetrec("train", sim_store, "-o", run, "--epochs", 400, "--batch-size", 8,
                                     "--zdim", 2, "--n-basis", 3, "-q"),
                              env={**os.environ, **rank_environment(rank, 2, port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    try:
        written = run / "checkpoints" / "last.pt"
        deadline = time.monotonic() + 240
        while not written.exists() and time.monotonic() < deadline and ranks[0].poll() is None:
            time.sleep(0.2)
        assert written.exists(), ranks[0].communicate() if ranks[0].poll() is not None else "no checkpoint in 240 s"
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=60)
        assert ranks[0].returncode == 1 and time.monotonic() - killed < 60
        lines = [line for line in stderr.splitlines() if line.strip() and "[WARNING]" not in line
                 and "built successfully" not in line]
        assert len(lines) == 1 and lines[0].startswith("Error: rank 0 of 2 lost contact"), stderr
        assert "--resume" in lines[0]
    finally:
        for rank in ranks:
            rank.kill()
    epoch = load_checkpoint(last_checkpoint(run))["epoch"]
    run_cli("train", sim_store, "-o", run, "--resume", "--epochs", epoch + 1, "-q")
    assert load_checkpoint(last_checkpoint(run))["epoch"] == epoch + 1
    assert np.load(run / "z.npy").shape == (300, 2)


def test_launch_dry_run_prints_each_launchers_command(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\nnode-a slots=4\nnode-b slots=4\n")
    common = ["--master-port", 29600, "--env", "NCCL_DEBUG=INFO", "--dry-run", "--", "train", "p.zarr", "-o", "run"]
    text = run_cli("launch", "--hostfile", hostfile, *common).output
    assert "deepspeed --log_level warning --hostfile" in text
    assert "--num_nodes 2 --num_gpus 4 --master_port 29600" in text
    assert "--master_addr node-a --no_local_rank --module hetrec_dist.cli train p.zarr -o run" in text
    assert "DS_ENV_FILE=" in text
    text = run_cli("launch", "--launcher", "mpirun", "--hostfile", hostfile, "--nodes", 1, *common).output
    assert "-n 4 -ppn 4 -hosts node-a -genv NCCL_DEBUG INFO -genv MASTER_PORT 29600" in text
    assert text.strip().endswith("-m hetrec_dist.cli train p.zarr -o run")
    text = run_cli("launch", "--launcher", "srun", "--nodes", 2, "--procs-per-node", 4, "--master-addr", "n1",
                   *common).output
    assert text.startswith("srun --nodes 2 --ntasks-per-node 4 "
                           "--export=ALL,NCCL_DEBUG=INFO,MASTER_PORT=29600,MASTER_ADDR=n1,HETREC_JOB_TOKEN=")


def test_the_deepspeed_launchers_local_rank_argument_is_accepted(sim_store):
    """`deepspeed --num_gpus N hetrec train …` passes --local_rank=I before the subcommand."""
    assert "n_particles" in run_cli("--local_rank=1", "inspect", sim_store).output


def test_launch_bad_inputs(tmp_path):
    assert_one_line_error(run_cli("launch", "--dry-run", expect_ok=False), "nothing to launch")
    assert_one_line_error(run_cli("launch", "--dry-run", "--", "convert", "x", expect_ok=False), "nothing to launch")
    (tmp_path / "hosts").write_text("node-a 4\n")
    result = run_cli("launch", "--hostfile", tmp_path / "hosts", "--dry-run", "--", "train", expect_ok=False)
    assert_one_line_error(result, "hosts:1", "slots=N")
    (tmp_path / "hosts").write_text("node-a slots=4\n")
    result = run_cli("launch", "--hostfile", tmp_path / "hosts", "--nodes", 3, "--dry-run", "--", "train",
                     expect_ok=False)
    assert_one_line_error(result, "--nodes 3", "1 host")
    result = run_cli("launch", "--launcher", "srun", "--hostfile", tmp_path / "hosts", "--dry-run", "--", "train",
                     expect_ok=False)
    assert_one_line_error(result, "srun", "--hostfile")
    result = run_cli("launch", "--env", "HETREC_SURELY_UNSET", "--dry-run", "--", "train", expect_ok=False)
    assert_one_line_error(result, "HETREC_SURELY_UNSET", "not set")


def test_cpu_ranks_that_share_memory_are_told_that_union_is_faster_than_auto():
    from hetrec_dist.distributed.data_parallel import DataParallel
    from hetrec_dist.distributed.training_world import TrainingWorld

    def ranks(shared_memory, reduction):
        basis = torch.nn.Parameter(torch.zeros(4, 2))
        return DataParallel(TrainingWorld(shared_memory=shared_memory), torch.nn.Linear(2, 2), 1e-3, 8,
                            torch.optim.SparseAdam([basis]), reduction, 60)

    assert any("--basis-reduction union is faster here" in hint for hint in ranks(True, "auto").hints())
    assert ranks(True, "union").hints() == [] and ranks(False, "auto").hints() == []
    assert ranks(True, "union").describe() == "1 rank(s) (ranks sum gradients through shared memory)"
