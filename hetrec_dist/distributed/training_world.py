"""The ranks `hetrec train` runs on, set up through DeepSpeed.

No launcher: one process, no process group. Under a launcher DeepSpeed's init_distributed finds the ranks:
the deepspeed launcher and torchrun set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; under `mpiexec`
DeepSpeed discovers them through mpi4py; under `srun` we map SLURM's variables (SLURM_PROCID,
SLURM_STEP_NUM_TASKS, SLURM_LOCALID) and MASTER_ADDR must name the first node (`hetrec launch` sets it).
Backend: NCCL on CUDA, gloo on CPU; per-step counts and objects go through a gloo group in both cases.
"""

import datetime
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from hetrec_dist.distributed.deepspeed_internals import (
    choose_accelerator,
    kernel_is_ready,
    load_shared_memory_kernel,
    prepare_shared_memory,
    unlink_shared_memory_buffer,
)
from hetrec_dist.distributed.launch_command import DEFAULT_MASTER_PORT, free_port
from hetrec_dist.distributed.mpi_world import ProcessWorld, launched_by_mpi, launched_world_size
from hetrec_dist.errors import UserError


class TrainingWorld(ProcessWorld):
    """The ranks of a torch.distributed process group (one process: the ProcessWorld defaults).

    shared_memory: whether CPU float32 sums over the ranks go through DeepSpeed's shared-memory kernel
    (distributed.deepspeed_internals), decided once when the ranks start.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, local_rank: int = 0, local_size: int = 1,
                 hints: Iterable[str] = (), shared_memory: bool = False):
        self.group, self.local_rank, self.local_size = group, local_rank, local_size
        self.hints = list(hints)  # for the user, about how these ranks were set up
        self.shared_memory = shared_memory
        if group is not None:
            self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def allgather_object(self, obj: Any) -> list[Any]:
        if self.group is None:
            return super().allgather_object(obj)
        gathered = [None] * self.size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        if self.group is None:
            return super().broadcast_object(obj)
        holder = [obj]
        dist.broadcast_object_list(holder, src=0, group=self.group)
        return holder[0]

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's obj, in rank order, on rank 0 (None elsewhere)."""
        if self.group is None:
            return [obj]
        gathered = [None] * self.size if self.is_root else None
        dist.gather_object(obj, gathered, dst=0, group=self.group)
        return gathered

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        """Every rank's list of ints, as a list of lists in rank order."""
        if self.group is None:
            return [list(values)]
        mine = torch.tensor(values, dtype=torch.long)
        gathered = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(gathered, mine, group=self.group)
        return [g.tolist() for g in gathered]

    def all_sum(self, values: list[float]) -> list[float]:
        """Sums over ranks of a list of floats."""
        if self.group is None:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total, group=self.group)
        return total.tolist()

    def all_sum_(self, tensor: torch.Tensor) -> None:
        """Sum a CPU tensor over the ranks, in place."""
        if self.group is not None:
            dist.all_reduce(tensor, group=self.group)

    def broadcast_(self, tensor: torch.Tensor) -> None:
        if self.group is not None:
            dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.group is not None:
            dist.barrier(group=self.group)

    def close(self) -> None:
        """Leave the process group together: a rank that destroys it while another still has gloo traffic
        with it can abort at exit ("terminate called without an active exception")."""
        if self.group is not None:
            dist.barrier(group=self.group)
            dist.destroy_process_group()


SLURM_PORTS = (20000, 28000)  # where a job's rendezvous port is drawn from its job and step numbers


def _environment_from_slurm():
    """Under srun (and not already set by another launcher): torch's variables from SLURM's."""
    env = os.environ
    if "RANK" in env or "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return
    if "MASTER_ADDR" not in env:
        raise UserError("under srun, set MASTER_ADDR to the first node's host name "
                        "(`hetrec launch --launcher srun` does, as do the launch/ templates)")
    env.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=env["SLURM_STEP_NUM_TASKS"],
               LOCAL_RANK=env.get("SLURM_LOCALID", "0"))
    job, step = env.get("SLURM_JOB_ID", "0"), env.get("SLURM_STEP_ID", "0")
    # every task computes the same port, and jobs (and steps) that share a node differ in it
    env.setdefault("MASTER_PORT", str(SLURM_PORTS[0] + (int(job) * 7 + int(step)) % (SLURM_PORTS[1] - SLURM_PORTS[0])
                                      if job.isdigit() and step.isdigit() else DEFAULT_MASTER_PORT))
    env.setdefault("HETREC_JOB_TOKEN", f"slurm-{job}.{step}")


def _rendezvous_from_mpi():
    """Under mpiexec without MASTER_PORT: rank 0 takes a free port of its host and a token for this job, and
    tells the others through MPI (so that no two jobs on a node share a port)."""
    if not launched_by_mpi() or "MASTER_PORT" in os.environ:
        return
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    chosen = (free_port(), uuid.uuid4().hex) if comm.Get_rank() == 0 else None
    port, token = comm.bcast(chosen, root=0)
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("HETREC_JOB_TOKEN", token)


def _init_process_group(backend, timeout_s):
    """DeepSpeed's init; a rendezvous port in use is one line that says how to choose another."""
    import deepspeed

    port = int(os.environ.get("MASTER_PORT", DEFAULT_MASTER_PORT))
    try:
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, verbose=False,
                                   distributed_port=port, timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as err:  # torch's DistNetworkError
        if "EADDRINUSE" not in str(err):
            raise
        raise UserError(f"port {port} of {os.environ.get('MASTER_ADDR', 'rank 0')} is in use (by another job?): "
                        "choose another with `hetrec launch --master-port` or MASTER_PORT") from None


def _refuse_other_jobs(identities):
    """Every rank's (host, job token): ranks of two jobs that met on one port stop, instead of training
    together."""
    tokens = {token for _, token in identities if token}
    if len(tokens) > 1:
        raise UserError(f"ranks of {len(tokens)} different jobs met at port {os.environ.get('MASTER_PORT')}; "
                        "start each job with its own port (`hetrec launch` picks a free one)")


def _quiet_deepspeed():
    choose_accelerator()
    from deepspeed.utils import logger
    logger.setLevel(logging.WARNING)


def _one_thread_share(local_size):
    """Ranks sharing a CPU each get their share of its cores (unless OMP_NUM_THREADS says otherwise)."""
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // local_size))


def init_training_world(timeout_s: float = 600, shared_memory: bool = True) -> TrainingWorld:
    """One process (no launcher), or this rank of the launcher's world, with the process group ready.
    shared_memory: let CPU ranks that share one machine sum through its memory (TrainConfig.shared_memory_sums)."""
    if launched_world_size() <= 1:
        return TrainingWorld()
    _environment_from_slurm()
    _rendezvous_from_mpi()
    hint = prepare_shared_memory(shared_memory)
    _quiet_deepspeed()
    load_shared_memory_kernel()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    _init_process_group(backend, timeout_s)
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)) \
        if backend == "nccl" else dist.group.WORLD
    identities = [None] * dist.get_world_size()
    identity = (socket.gethostname(), os.environ.get("HETREC_JOB_TOKEN", ""))
    dist.all_gather_object(identities, identity, group=control)  # after every rank's init
    _refuse_other_jobs(identities)
    hosts = [host for host, _ in identities]
    unlink_shared_memory_buffer()
    local_size = hosts.count(socket.gethostname())
    local_rank = int(os.environ.get("LOCAL_RANK", hosts[:dist.get_rank()].count(socket.gethostname())))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:
        _one_thread_share(local_size)
    return TrainingWorld(control, local_rank, local_size, hints=[hint] if hint else [],
                         shared_memory=kernel_is_ready())
