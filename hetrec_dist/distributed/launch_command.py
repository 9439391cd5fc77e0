"""The command line that starts `hetrec train` on several ranks, for the deepspeed launcher, mpirun (MPICH or
Open MPI) or srun. Every rank runs `python -m hetrec_dist.cli train …` with this Python, so the nodes must
see the same environment (a shared file system, the same virtual environment path).
"""

import dataclasses
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import uuid

from hetrec_dist.errors import UserError

LAUNCHERS = ("deepspeed", "mpirun", "srun")
DEFAULT_MASTER_PORT = 29500  # torch's and DeepSpeed's, where nothing chooses another
REMOTE_PORTS = (29500, 30499)  # where a port is drawn when rank 0 runs on another host, which cannot be asked
_HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


@dataclasses.dataclass
class LaunchPlan:
    launcher: str = "deepspeed"
    hostfile: str | None = None
    nodes: int | None = None
    procs_per_node: int | None = None
    master_addr: str | None = None
    master_port: int | None = None  # None: a free port of this host, or a random one for a remote rank 0
    env: tuple = ()          # NAME (forward this process's value) or NAME=VALUE


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """DeepSpeed's hostfile: `host slots=N` a line, # comments. Returns [(host, slots)]."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise UserError(f"{path}: cannot read the hostfile ({err.strerror})") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = _HOSTFILE_LINE.match(line)
        if not match:
            raise UserError(f"{path}:{number}: expected `hostname slots=N`, got {line!r}")
        hosts.append((match.group(1), int(match.group(2))))
    if not hosts:
        raise UserError(f"{path}: no hosts in the hostfile")
    if len({h for h, _ in hosts}) != len(hosts):
        raise UserError(f"{path}: a host is listed twice")
    return hosts


def free_port() -> int:
    """A TCP port that nothing on this host listens on now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _master_port(plan, hosts):
    """--master-port, else a free port of this host where rank 0 runs here (so that two jobs on one machine,
    or a job started right after another, never meet), else one drawn from REMOTE_PORTS."""
    if plan.master_port is not None:
        return plan.master_port
    rank0_host = plan.master_addr or (hosts[0][0] if hosts else None)
    if plan.launcher == "srun" or rank0_host in (None, "localhost", "127.0.0.1", socket.gethostname()):
        return free_port()
    return random.SystemRandom().randint(*REMOTE_PORTS)


def _environment(plan):
    """NAME=VALUE pairs to forward: --env values, MASTER_PORT (and MASTER_ADDR when known), and a token that
    every rank of this job shares (distributed.training_world checks that no rank met another job's)."""
    pairs = {}
    for item in plan.env:
        name, has_value, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UserError(f"--env {item!r}: expected NAME or NAME=VALUE")
        if not has_value:
            if name not in os.environ:
                raise UserError(f"--env {name}: not set in this environment (use --env {name}=VALUE)")
            value = os.environ[name]
        pairs[name] = value
    pairs["MASTER_PORT"] = str(plan.master_port)
    if plan.master_addr:
        pairs["MASTER_ADDR"] = plan.master_addr
    pairs["HETREC_JOB_TOKEN"] = uuid.uuid4().hex
    return pairs


def _hosts_and_shape(plan):
    """(hosts or None, nodes, procs per node) from the hostfile and the options."""
    hosts = read_hostfile(plan.hostfile) if plan.hostfile else None
    nodes = plan.nodes or (len(hosts) if hosts else 1)
    if hosts and nodes > len(hosts):
        raise UserError(f"--nodes {nodes}, but the hostfile lists {len(hosts)} host(s)")
    procs = plan.procs_per_node or (min(s for _, s in hosts[:nodes]) if hosts else _local_devices())
    return (hosts[:nodes] if hosts else None), nodes, procs


def _local_devices():
    import torch

    return max(1, torch.cuda.device_count())


def _mpi_flavour():
    """mpiexec of this environment (e.g. the PyPI mpich package) or of PATH, and whose it is."""
    here = os.path.dirname(sys.executable)
    executable = shutil.which("mpiexec", path=here) or shutil.which("mpiexec") or shutil.which("mpirun")
    if executable is None:
        raise UserError("mpirun/mpiexec not found on PATH (install MPICH or Open MPI, e.g. `pip install mpich`)")
    try:
        version = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise UserError(f"{executable} --version failed ({err})") from None
    return executable, "openmpi" if "Open MPI" in version or "OpenRTE" in version else "mpich"


def build_command(plan: LaunchPlan, command: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) that start `hetrec COMMAND…` (train or reconstruct and their arguments) on
    the planned ranks."""
    if plan.launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {plan.launcher!r} (one of {', '.join(LAUNCHERS)})")
    hosts, nodes, procs = _hosts_and_shape(plan)
    plan = dataclasses.replace(plan, master_port=_master_port(plan, hosts))
    env = _environment(plan)
    train = ["-m", "hetrec_dist.cli", *command]
    if plan.launcher == "deepspeed":
        return _deepspeed(plan, hosts, nodes, procs, env, train)
    if plan.launcher == "mpirun":
        return _mpirun(hosts, nodes, procs, env, train), {}
    return _srun(plan, nodes, procs, env, train), {}


def _deepspeed(plan, hosts, nodes, procs, env, train):
    """The deepspeed launcher passes our environment to local ranks; remote nodes get the variables of the
    file named by DS_ENV_FILE (written by `hetrec launch` when it runs the command)."""
    argv = [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--log_level", "warning"]
    if plan.hostfile:
        argv += ["--hostfile", plan.hostfile]
    argv += ["--num_nodes", str(nodes), "--num_gpus", str(procs), "--master_port", str(plan.master_port)]
    if plan.master_addr or hosts:
        argv += ["--master_addr", plan.master_addr or hosts[0][0]]
    argv += ["--no_local_rank", "--module", *train[1:]]
    return argv, env


def _mpirun(hosts, nodes, procs, env, train):
    executable, flavour = _mpi_flavour()
    argv = [executable]
    if flavour == "mpich":
        argv += ["-n", str(nodes * procs), "-ppn", str(procs)]
        if hosts:
            argv += ["-hosts", ",".join(h for h, _ in hosts)]
        for name, value in env.items():
            argv += ["-genv", name, value]
    else:
        argv += ["-np", str(nodes * procs), "--npernode", str(procs)]
        if hosts:
            argv += ["--host", ",".join(f"{h}:{procs}" for h, _ in hosts)]
        for name, value in env.items():
            argv += ["-x", f"{name}={value}"]
    return argv + [sys.executable, *train]


def _srun(plan, nodes, procs, env, train):
    if plan.hostfile:
        raise UserError("srun takes its nodes from the Slurm allocation; --hostfile is for deepspeed and mpirun")
    env.setdefault("MASTER_ADDR", socket.gethostname())  # the batch script runs on the allocation's first node
    exports = ",".join(["ALL"] + [f"{name}={value}" for name, value in env.items()])
    return ["srun", "--nodes", str(nodes), "--ntasks-per-node", str(procs), f"--export={exports}",
            sys.executable, *train]
