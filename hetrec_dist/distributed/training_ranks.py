"""A training job's ranks from start to end: started (training_world.init_training_world), stopped together
with their launcher, and closed on the way out.

Launchers stop the other ranks when one dies (the deepspeed launcher with SIGTERM), and `hetrec launch` stops
them all when it is stopped; a rank whose launcher was killed outright (kill -9) sees it gone
(process_tree.watch_launcher). Either way rank 0 says so before it goes (the last complete checkpoint stays).
"""

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

from hetrec_dist.distributed.data_parallel import RankLost
from hetrec_dist.distributed.mpi_world import RankFailed
from hetrec_dist.distributed.process_tree import LAUNCH_PID, watch_launcher
from hetrec_dist.distributed.training_world import TrainingWorld, init_training_world
from hetrec_dist.errors import UserError


@contextlib.contextmanager
def training_ranks(timeout_s: float, shared_memory: bool,
                   tell_stopped: Callable[[str], None]) -> Iterator[TrainingWorld]:
    """This process's TrainingWorld (init_training_world(timeout_s, shared_memory)) for the with-block. Under a
    launcher, a rank its launcher stops or leaves ends the process at once, rank 0 first calling
    tell_stopped(why), e.g. "rank 0 of 2 was stopped by its launcher (...)". The world is closed after the
    block, and after a UserError or RankFailed, which reach every rank together; after RankLost it is left
    open: there is no one to leave the process group with."""
    world = init_training_world(timeout_s, shared_memory)
    if world.size > 1 or LAUNCH_PID in os.environ:
        _stop_with_the_launcher(world, tell_stopped)
    try:
        yield world
    except RankLost:
        raise
    except (UserError, RankFailed):
        world.close()
        raise
    world.close()


def _stop_with_the_launcher(world, tell_stopped):
    def stop(why):
        if world.is_root:
            tell_stopped(f"rank {world.rank} of {world.size} {why}")
        os._exit(1)

    if world.is_root:  # the others end at once (SIGTERM's default): a Python handler runs only once the main
        # thread leaves C, which a collective waiting on a rank that has gone may not do for long
        signal.signal(signal.SIGTERM, lambda signum, frame: stop(
            "was stopped by its launcher (another rank failed or was killed, or the job was stopped)"))
    watch_launcher(lambda what: stop(f"stopped because the {what} is gone"))
