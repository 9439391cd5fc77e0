"""Sums over ranks that share one machine's memory, through DeepSpeed's shared-memory all-reduce.

Where every rank runs on this machine (the DeepSpeed launcher's LOCAL_SIZE is the world size), DeepSpeed's
shared-memory kernel sums CPU float32 tensors: 10.5 MB in about 2 ms against gloo's 8 ms over loopback TCP,
with the same bits (tools/bench_allreduce.py). It waits for a dead rank forever, so a watchdog ends this
process after a timeout. Elsewhere (NCCL, several nodes, other dtypes) the sum goes through the process group,
which times out by itself.

Two more of its habits are mended here: torch builds and loads the kernel under a lock file that a process
stopped meanwhile leaves behind (every later run would wait on it forever), and its buffers' names are never
removed from /dev/shm (each run would hold 66 MiB of the machine's memory a rank until reboot).
"""

import os
import sys
import threading
import time

import torch
import torch.distributed as dist

from hetrec_dist.errors import UserError


def sum_over_ranks(tensor, group, timeout_s):
    """In-place all-reduce SUM of `tensor` over `group`."""
    if sums_in_shared_memory(tensor.device, tensor.dtype, group):
        import deepspeed.comm

        run_or_exit(lambda: deepspeed.comm.inference_all_reduce(tensor), timeout_s,
                    "a shared-memory all-reduce")
    else:
        dist.all_reduce(tensor, group=group)


def sums_in_shared_memory(device, dtype, group):
    """Whether sum_over_ranks of a tensor of this device and dtype goes through the shared-memory kernel."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and ranks_share_memory(group)


def ranks_share_memory(group):
    """Whether DeepSpeed set up its shared-memory all-reduce for the whole world (on the LOCAL_SIZE check its
    kernel makes) and `group` is that world. A process that never imported DeepSpeed (a plain
    torch.distributed one) has not, and is not made to import it here, on every step."""
    comm = sys.modules.get("deepspeed.comm")
    return (comm is not None and comm.is_initialized() and group in (None, dist.group.WORLD)
            and os.environ.get("LOCAL_SIZE") == str(dist.get_world_size()))


BUILD_LOCK_STALE_S = 300  # the kernel builds in ~25 s on 2 cores; a lock this old was left by a stopped process
BUILD_LOCK_PATIENCE_S = 30  # after this long, say what the wait is for


def load_shared_memory_kernel():
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
            sys.stderr.write(f"hetrec: waiting for {lock}: another process is building DeepSpeed's shared-memory "
                             f"kernel, or one stopped while it did (then the lock goes at {BUILD_LOCK_STALE_S} s)\n")


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


def shared_memory_room(n_ranks):
    """(bytes /dev/shm holds, bytes n_ranks' buffers need). Where it holds less (Docker's default is 64 MB)
    the kernel dies of SIGSEGV or SIGBUS. The size, not the free space, so that every rank decides alike."""
    needed = n_ranks * BUFFER_BYTES
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return 0, needed
    return stats.f_frsize * stats.f_blocks, needed


def unlink_shared_memory_buffer():
    """Remove this rank's buffer name from /dev/shm, which DeepSpeed never does. Call it once every rank has
    mapped every buffer (after a collective that follows DeepSpeed's init); the mappings stay."""
    if ranks_share_memory(None):
        env = os.environ
        _remove(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_{env['MASTER_PORT']}_"
                f"{dist.get_rank()}")


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def run_or_exit(call, timeout_s, what):
    """call(); if it has not returned after timeout_s, a one-line error and exit status 1 (for waits that no
    process-group timeout covers)."""
    def give_up():
        sys.stderr.write(f"Error: rank {dist.get_rank()} of {dist.get_world_size()}: {what} got no answer from "
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
