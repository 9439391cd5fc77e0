#!/bin/bash
# MPI: data-parallel `hetrec train` with mpirun/mpiexec (MPICH, e.g. the PyPI `mpich` the set-up installs,
# or Open MPI). Usage:
#   [HOSTFILE=hosts] [PROCS_PER_NODE=4] launch/mpirun.sh STORE RUN [more train options…]
# HOSTFILE is DeepSpeed's format (see hostfile.example); without it the ranks run on this machine.
# DeepSpeed discovers the ranks through mpi4py; rank 0's host is the master address.
set -euo pipefail
STORE=$1 RUN=$2
shift 2
LAUNCH=(--launcher mpirun --procs-per-node "${PROCS_PER_NODE:-2}" --env OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
if [[ -n ${HOSTFILE:-} ]]; then LAUNCH+=(--hostfile "$HOSTFILE"); fi
HETREC=${HETREC:-$(dirname "$0")/../.venv/bin/hetrec}
exec "$HETREC" launch "${LAUNCH[@]}" -- train "$STORE" -o "$RUN" "$@"
