"""Every use of DeepSpeed's and torch's private names, in one place, checked against DeepSpeed 0.19.8.

All of it serves CPU ranks on one machine: where every rank runs on this machine, DeepSpeed's shared-memory
kernel sums CPU float32 tensors several times faster than gloo over loopback TCP, with the same bits
(tools/bench_allreduce.py; docs/benchmarks.md). The switch is TrainConfig.shared_memory_sums (on by default;
it takes effect only for CPU ranks that all share one machine and a /dev/shm large enough). The kernel waits
for a dead rank forever, so a watchdog ends this process after a timeout. Elsewhere (NCCL, several nodes,
other dtypes, the switch off) sums go through the process group, which times out by itself.

What is private here, and what it is for:
- LOCAL_SIZE: DeepSpeed's init builds the kernel's buffers only where this variable (which only its own
  launcher sets) equals the world size; we set it under mpiexec and single-node srun, and drop it to
  switch the kernel off.
- DS_ACCELERATOR: chosen before DeepSpeed is imported, so that it does not probe for devices and warn.
- deepspeed.comm.inference_all_reduce: the kernel's sum.
- The kernel's build: torch's private _get_build_directory (where its lock file is) and DeepSpeed's op
  registry __compatible_ops__; torch leaves a lock behind when a process is stopped while it loads the
  kernel, and every later run would wait on it forever.
- The kernel's buffers: their size (BUFFER_BYTES) and their names in /dev/shm, which DeepSpeed never removes
  (each run would hold 66 MiB of the machine's memory a rank until reboot).
- DeepSpeedEngine.enable_backward_allreduce: turned off where the dense gradients are averaged here.
"""

import importlib.metadata
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

from hetrec_dist.errors import UserError

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

_T = TypeVar("_T")

CHECKED_DEEPSPEED = ((0, 19, 8), (0, 20, 0))  # the range whose internals this module was checked against


def _check_deepspeed_version():
    try:
        version = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        return  # a one-process install; nothing here runs
    numbers = tuple(int(part) for part in version.split("+")[0].split(".")[:3] if part.isdigit())
    low, high = CHECKED_DEEPSPEED
    if not low <= numbers < high:
        raise ImportError(f"hetrec's use of DeepSpeed's internals was checked against DeepSpeed "
                          f"{'.'.join(map(str, low))} to below {'.'.join(map(str, high))}, not {version}; "
                          "install a version in that range")


_check_deepspeed_version()


def choose_accelerator() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def sum_over_ranks(tensor: torch.Tensor, group: dist.ProcessGroup | None, timeout_s: float,
                   shared_memory: bool) -> None:
    """In-place all-reduce SUM of `tensor` over `group`: through the shared-memory kernel where `shared_memory`
    (the world's switch) is on and the tensor is CPU float32, else through the process group."""
    if shared_memory and sums_in_shared_memory(tensor.device, tensor.dtype):
        import deepspeed.comm

        run_or_exit(lambda: deepspeed.comm.inference_all_reduce(tensor), timeout_s,
                    "a shared-memory all-reduce")
    else:
        dist.all_reduce(tensor, group=group)


def sums_in_shared_memory(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the kernel can sum a tensor of this device and dtype (it sums CPU float32 only)."""
    return torch.device(device).type == "cpu" and dtype == torch.float32


def kernel_is_ready() -> bool:
    """Whether DeepSpeed's init set up the shared-memory kernel for the whole world (on the LOCAL_SIZE check
    its kernel makes). A process that never imported DeepSpeed has not, and is not made to import it."""
    comm = sys.modules.get("deepspeed.comm")
    return (comm is not None and comm.is_initialized() and dist.is_initialized()
            and os.environ.get("LOCAL_SIZE") == str(dist.get_world_size()))


def prepare_shared_memory(wanted: bool) -> str | None:
    """Before DeepSpeed's init: set LOCAL_SIZE where the ranks are all on this machine (Open MPI's or MPICH's
    variable under mpiexec, SLURM's under single-node srun; the DeepSpeed launcher sets it itself), or drop
    it where the kernel is not `wanted`, runs on GPUs, or would not fit in /dev/shm. Returns a hint for the
    user where /dev/shm is too small, else None."""
    env = os.environ
    if "LOCAL_SIZE" not in env:
        found = [env[name] for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") if name in env]
        if found:
            env["LOCAL_SIZE"] = found[0]
        elif env.get("SLURM_STEP_NUM_NODES") == "1" and "SLURM_STEP_NUM_TASKS" in env:
            env["LOCAL_SIZE"] = env["SLURM_STEP_NUM_TASKS"]
    if "LOCAL_SIZE" not in env or torch.cuda.is_available():
        return None
    if not wanted:
        env.pop("LOCAL_SIZE")
        return None
    available, needed = shared_memory_room(int(env["LOCAL_SIZE"]))
    if available < needed:
        ranks = env.pop("LOCAL_SIZE")
        return (f"/dev/shm holds {available >> 20} MiB, less than the {needed >> 20} MiB that the shared-memory "
                f"all-reduce of {ranks} ranks needs: ranks sum through gloo, which is slower (in Docker: "
                "docker run --shm-size 1g)")
    return None


def stop_engine_averaging(engine: "DeepSpeedEngine") -> None:
    """The engine's backward and step no longer average the gradients over ranks (the caller does)."""
    engine.enable_backward_allreduce = False


BUILD_LOCK_STALE_S = 300  # the kernel builds in ~25 s on 2 cores; a lock this old was left by a stopped process
BUILD_LOCK_PATIENCE_S = 30  # after this long, say what the wait is for


def load_shared_memory_kernel() -> None:
    """Load DeepSpeed's shared-memory all-reduce kernel (JIT-built on a machine's first run) where DeepSpeed's
    init would, so that its init finds it loaded, and remove a build lock older than any build, before and
    while waiting for it."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    lock = os.path.join(_get_build_directory(builder.NAME, verbose=False), "lock")
    _remove_if_stale(lock)
    loaded, removed = threading.Event(), threading.Event()
    threading.Thread(target=_watch_lock, args=(lock, loaded, removed), daemon=True).start()
    try:
        builder.load()
    except ImportError as error:
        if removed.is_set():  # torch takes the removal for the end of a build, which never finished
            raise UserError(f"DeepSpeed's shared-memory kernel was left half-built by a stopped process; start "
                            f"the run again to build it ({error})") from error
        raise
    finally:
        loaded.set()


def _watch_lock(lock, loaded, removed):
    waited = 0
    while not loaded.wait(1):
        waited += 1
        if _remove_if_stale(lock):
            removed.set()
        elif waited == BUILD_LOCK_PATIENCE_S and os.path.exists(lock):
            sys.stderr.write(f"hetrec: another rank is building DeepSpeed's shared-memory kernel (once per "
                             f"environment); waiting for it (a lock left by a stopped build goes after "
                             f"{BUILD_LOCK_STALE_S} s: {lock})\n")


def _remove_if_stale(lock):
    try:
        age = time.time() - os.path.getmtime(lock)
    except FileNotFoundError:
        return False
    if age <= BUILD_LOCK_STALE_S:
        return False
    _remove(lock)
    sys.stderr.write(f"hetrec: removed {lock}, left {age:.0f} s ago by a process stopped while it loaded "
                     "DeepSpeed's shared-memory kernel\n")
    return True


BUFFER_BYTES = 69_206_024  # a rank's buffer in DeepSpeed 0.19's kernel (its struct allreduce_workspace)


def shared_memory_room(n_ranks: int) -> tuple[int, int]:
    """(bytes /dev/shm holds, bytes n_ranks' buffers need). Where it holds less (Docker's default is 64 MB)
    the kernel dies of SIGSEGV or SIGBUS. The size, not the free space, so that every rank decides alike."""
    needed = n_ranks * BUFFER_BYTES
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return 0, needed
    return stats.f_frsize * stats.f_blocks, needed


def unlink_shared_memory_buffer() -> None:
    """Remove this rank's buffer name from /dev/shm, which DeepSpeed never does. Call it once every rank has
    mapped every buffer (after a collective that follows DeepSpeed's init); the mappings stay."""
    if kernel_is_ready():
        env = os.environ
        _remove(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_{env['MASTER_PORT']}_"
                f"{dist.get_rank()}")


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def run_or_exit(call: Callable[[], _T], timeout_s: float, what: str) -> _T:
    """call(); if it has not returned after timeout_s, a one-line error and exit status 1 (for waits that no
    process-group timeout covers)."""
    def give_up():
        sys.stderr.write(f"\nError: rank {dist.get_rank()} of {dist.get_world_size()}: {what} got no answer from "
                         f"the other ranks in {timeout_s} s; continue from the last checkpoint with --resume\n")
        sys.stderr.flush()
        os._exit(1)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        return call()
    finally:
        watchdog.cancel()
