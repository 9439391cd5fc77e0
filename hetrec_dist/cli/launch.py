"""hetrec launch: start `hetrec train` (or `hetrec reconstruct`) on several ranks and nodes through deepspeed,
mpirun or srun."""

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import click

from hetrec_dist.data.atomic_files import open_log
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.distributed.launch_command import LAUNCHERS, LaunchPlan, build_command
from hetrec_dist.distributed.process_tree import launcher_environment, stop_tree
from hetrec_dist.errors import UserError

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_GRACE_S = 20.0  # for the launcher to stop its ranks (and write their resume line) before they are killed


@click.command("launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--launcher", type=click.Choice(LAUNCHERS), default="deepspeed", show_default=True)
@click.option("--hostfile", type=click.Path(dir_okay=False),
              help="DeepSpeed hostfile (`host slots=N` a line); deepspeed and mpirun only.")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes to use (default: all in the hostfile, else 1).")
@click.option("--procs-per-node", type=click.IntRange(min=1),
              help="Ranks a node (default: the hostfile's slots, else this machine's GPUs, else 1).")
@click.option("--master-addr", help="Host of rank 0 (default: first hostfile host; srun: this host).")
@click.option("--master-port", type=click.IntRange(1, 65535),
              help="Rank 0's rendezvous port (default: a free port of this host, or a random one for a remote "
                   "rank 0).")
@click.option("--env", "env", multiple=True, metavar="NAME[=VALUE]",
              help="Forward a variable to every rank (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the exact command and exit.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def command(command, dry_run, **options):
    """Run `hetrec train ARGS…` data-parallel: hetrec launch [OPTIONS] -- train STORE -o RUN [OPTIONS]
    (or `-- reconstruct SOURCE -o OUT [OPTIONS]`).

    \b
    Examples:
      hetrec launch --procs-per-node 4 -- train particles.zarr -o run
      hetrec launch --hostfile hosts --launcher mpirun -- train particles.zarr -o run
      hetrec launch --launcher srun --nodes 2 --procs-per-node 4 -- train particles.zarr -o run   (in sbatch)
    """
    if not command or command[0] not in ("train", "reconstruct"):
        raise UserError("nothing to launch: give the training command after --, e.g. "
                        "`hetrec launch --procs-per-node 2 -- train STORE -o RUN` (or `-- reconstruct …`)")
    plan = LaunchPlan(**options)
    argv, env = build_command(plan, list(command))
    env_file = _deepspeed_env_file(plan, env, dry_run)
    if env_file:
        env = {**env, "DS_ENV_FILE": env_file}
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    if dry_run:
        click.echo(f"{prefix} {shlex.join(argv)}" if prefix else shlex.join(argv))
        return
    click.echo(f"hetrec launch: {shlex.join(argv)}", err=True)
    try:
        status, stopped_by = _run_job(argv, {**os.environ, **env, **launcher_environment()})
    finally:
        if env_file:
            os.unlink(env_file)
    if stopped_by is not None:
        _say_it_stopped(command, f"hetrec launch received {signal.Signals(stopped_by).name} and stopped the job")
        sys.exit(128 + stopped_by)
    if status not in (0, 1):  # 1: a rank already said why; anything else: a rank was killed
        _say_it_stopped(command, f"the job stopped ({plan.launcher} exited with status {status}: a rank was "
                        "killed or crashed)")
    sys.exit(status)


def _say_it_stopped(command, what):
    if command[0] == "train":
        _say_where_to_continue(list(command[1:]), what)
    else:  # a reconstruction starts again from the beginning
        click.echo(f"Error: {what}", err=True)


class _Stop(Exception):
    pass


def _run_job(argv, env):
    """(exit status, None) of the launcher's command; or, where this process gets SIGTERM, SIGINT or SIGHUP,
    (status, the signal) after the job's whole process tree was stopped (process_tree.stop_tree)."""
    def stop(signum, frame):
        raise _Stop(signum)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        job = subprocess.Popen(argv, env=env, start_new_session=True)  # Ctrl-C reaches launch, which stops it
    except OSError as err:
        raise UserError(f"cannot start {argv[0]} ({err.strerror})") from None
    try:
        return job.wait(), None
    except _Stop as received:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C does not cut the stopping short
        click.echo(f"hetrec launch: {signal.Signals(received.args[0]).name} received; stopping the job "
                   f"(up to {STOP_GRACE_S:.0f} s)", err=True)
        stop_tree(job.pid, STOP_GRACE_S)
        return job.wait(), received.args[0]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _say_where_to_continue(train_args, what):
    """After a job that stopped before its end: what happened and the resume line, on the console and in the
    run's train.log."""
    run = next((train_args[i + 1] for i, arg in enumerate(train_args[:-1]) if arg in ("-o", "--out")),
               next((arg.split("=", 1)[1] for arg in train_args if arg.startswith("--out=")), None))
    where = f"{run}/checkpoints" if run else "the run's checkpoints"
    line = f"{what}; continue from the last checkpoint in {where} with `hetrec launch … -- train … --resume`"
    click.echo(f"Error: {line}", err=True)
    if run and os.path.isdir(run):
        with contextlib.suppress(OSError), open_log(RunFolder(run).log) as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped: {line}\n")


def _deepspeed_env_file(plan, env, dry_run):
    """Remote nodes of the deepspeed launcher get only the variables listed in DS_ENV_FILE: write them."""
    if plan.launcher != "deepspeed" or not plan.hostfile:
        return None
    if dry_run:
        return os.path.join(tempfile.gettempdir(), "hetrec_deepspeed_env_<pid>")
    with tempfile.NamedTemporaryFile("w", prefix="hetrec_deepspeed_env_", delete=False) as f:
        f.writelines(f"{k}={v}\n" for k, v in env.items())
    return f.name
