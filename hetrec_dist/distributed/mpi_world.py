"""The MPI world a command runs in: one process, or the ranks of `mpiexec -n N`.

mpi4py is imported only when an MPI launcher's environment says there are several ranks, so that a plain
run never initialises MPI.
"""

import os

from hetrec_dist.errors import UserError

_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")
_LAUNCHER_SIZE_VARIABLES = _MPI_SIZE_VARIABLES + ("WORLD_SIZE", "SLURM_NTASKS")


class RankFailed(SystemExit):
    """Raised on the other ranks when one rank reported an error (rank 0 prints it once)."""

    def __init__(self):
        super().__init__(1)


class MpiWorld:
    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm else 0
        self.size = comm.Get_size() if comm else 1

    def _agree(self, error):
        """Share each rank's error (or None); every rank raises if any failed."""
        errors = self.comm.allgather(None if error is None else str(error)) if self.comm else [error]
        first = next((e for e in errors if e is not None), None)
        if first is None:
            return
        if self.rank == 0:
            raise error if isinstance(error, UserError) else UserError(str(first))
        raise RankFailed()

    def run_everywhere(self, fn):
        """fn() on every rank; a UserError on any rank stops all of them together."""
        result, error = None, None
        try:
            result = fn()
        except UserError as err:
            if not self.comm:
                raise
            error = err
        self._agree(error)
        return result

    def run_on_root(self, fn):
        """fn() on rank 0 only; its result (or its error) reaches every rank."""
        result = self.run_everywhere(lambda: fn() if self.rank == 0 else None)
        return self.comm.bcast(result, root=0) if self.comm else result


def _size_in_environment(variables):
    return max(int(os.environ.get(v, "1") or 1) for v in variables)


def launched_world_size():
    """How many processes a launcher (mpiexec, deepspeed, torchrun, srun) started, from its environment."""
    return _size_in_environment(_LAUNCHER_SIZE_VARIABLES)


def mpi_world():
    if _size_in_environment(_MPI_SIZE_VARIABLES) <= 1:
        return MpiWorld()
    from mpi4py import MPI
    return MpiWorld(MPI.COMM_WORLD)
