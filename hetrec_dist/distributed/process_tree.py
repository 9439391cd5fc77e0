"""Processes that end with the job: a launcher stops its whole tree, ranks stop when their launcher is gone,
workers die with their parent.

- stop_tree: what `hetrec launch` does on SIGTERM, SIGINT or SIGHUP (kill, Ctrl-C, systemd, Slurm's time limit,
  a closed terminal). The launcher it started (deepspeed, mpirun, srun), which alone reaches the ranks of
  other nodes, and every local process of the job get SIGTERM; whatever still runs after a grace period is
  killed.
- watch_launcher: a rank's thread that notices `hetrec launch` (same host) or the rank's own parent (the
  deepspeed, mpirun or srun process of its node) has gone, as after kill -9 of the launcher.
- die_with_parent: a DataLoader worker asks the kernel to kill it when the training process goes
  (Linux's PR_SET_PDEATHSIG; elsewhere the worker's own check of its parent remains).
"""

import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

import psutil

LAUNCH_PID, LAUNCH_HOST = "HETREC_LAUNCH_PID", "HETREC_LAUNCH_HOST"
_PR_SET_PDEATHSIG = 1


def launcher_environment() -> dict[str, str]:
    """The variables `hetrec launch` gives its job so that the ranks on this host can watch it."""
    return {LAUNCH_PID: str(os.getpid()), LAUNCH_HOST: socket.gethostname()}


def stop_tree(root_pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM to `root_pid` (the launcher, which reaches other nodes' ranks) and to every process of its tree
    on this host (the ranks here stop at once, writing their resume line: a launcher need not pass the signal
    on, and DeepSpeed's does not), then SIGKILL to those that have not ended `grace_s` seconds later."""
    try:
        root = psutil.Process(root_pid)
        tree = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _watched() -> list[psutil.Process]:
    """This process's parent, and `hetrec launch` where it runs on this host."""
    watched = [psutil.Process(os.getppid())]
    if os.environ.get(LAUNCH_HOST) == socket.gethostname() and os.environ.get(LAUNCH_PID, "").isdigit():
        try:
            watched.append(psutil.Process(int(os.environ[LAUNCH_PID])))
        except psutil.NoSuchProcess:
            pass  # already gone: the parent's end will be seen
    return watched


def watch_launcher(on_gone: Callable[[str], None], interval_s: float = 1.0) -> None:
    """Start a daemon thread that calls on_gone(what) once when this process's parent, or the `hetrec launch`
    process that started the job on this host, no longer runs (is_running compares the creation time, so a
    reused pid does not count as alive)."""
    watched = _watched()

    def watch():
        while True:
            time.sleep(interval_s)
            gone = next((p for p in watched if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE), None)
            if gone is not None:
                on_gone(f"process {gone.pid} that launched this rank")
                return

    threading.Thread(target=watch, name="hetrec-launcher-watch", daemon=True).start()


def die_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """DataLoader worker_init_fn (with functools.partial(die_with_parent, os.getpid())): the kernel sends this
    worker SIGKILL when its parent ends, however it ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent ended before the request
        os._exit(1)
