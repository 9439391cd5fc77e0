"""The world a command runs in: one process, or the ranks a launcher started.

ProcessWorld is the part every kind of world shares: rank, size, and running a step everywhere such that a
UserError on one rank stops all of them together (rank 0 reports it once). MpiWorld talks through mpi4py
(`mpiexec -n N hetrec convert`); training uses distributed.training_world.TrainingWorld (torch.distributed).
mpi4py is imported only when an MPI launcher's environment says there are several ranks, so that a plain
run never initialises MPI.
"""

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from hetrec_dist.errors import UserError

if TYPE_CHECKING:
    from mpi4py import MPI

_T = TypeVar("_T")

_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")
# srun sets SLURM_STEP_NUM_TASKS inside a job step only; SLURM_NTASKS is also set in a batch script's one process
_LAUNCHER_SIZE_VARIABLES = _MPI_SIZE_VARIABLES + ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


class RankFailed(SystemExit):
    """Raised on the other ranks when one rank reported an error (rank 0 prints it once)."""

    def __init__(self):
        super().__init__(1)


class ProcessWorld:
    """One process; subclasses add the collectives allgather_object and broadcast_object."""
    rank, size = 0, 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def _agree(self, error):
        """Share each rank's error (or None); every rank raises if any failed."""
        errors = self.allgather_object(None if error is None else str(error))
        first = next((e for e in errors if e is not None), None)
        if first is None:
            return
        if self.is_root:
            raise error if isinstance(error, UserError) else UserError(first)
        raise RankFailed()

    def run_everywhere(self, fn: Callable[[], _T]) -> _T:
        """fn() on every rank; a UserError on any rank stops all of them together."""
        result, error = None, None
        try:
            result = fn()
        except UserError as err:
            if self.size == 1:
                raise
            error = err
        self._agree(error)
        return result

    def run_on_root(self, fn: Callable[[], _T]) -> _T:
        """fn() on rank 0 only; its result (or its error) reaches every rank."""
        result = self.run_everywhere(lambda: fn() if self.is_root else None)
        return self.broadcast_object(result)


class MpiWorld(ProcessWorld):
    def __init__(self, comm: "MPI.Comm"):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def broadcast_object(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)


def _size_in_environment(variables):
    return max(int(os.environ.get(v, "1") or 1) for v in variables)


def launched_world_size() -> int:
    """How many processes a launcher (mpiexec, deepspeed, torchrun, srun) started, from its environment."""
    return _size_in_environment(_LAUNCHER_SIZE_VARIABLES)


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun) started several processes, from its environment."""
    return _size_in_environment(_MPI_SIZE_VARIABLES) > 1


def mpi_world() -> ProcessWorld:
    if not launched_by_mpi():
        return ProcessWorld()
    from mpi4py import MPI
    return MpiWorld(MPI.COMM_WORLD)
