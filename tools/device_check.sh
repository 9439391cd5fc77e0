#!/usr/bin/env bash
# The GPU check in one call (issue 17), from the project root, on a machine with CUDA PyTorch and no network:
#
#   tools/device_check.sh                        # cuda; results in $OUT (default /tmp/device_check_out)
#   tools/device_check.sh --device cpu --scale 0.25   # the same steps on a CPU (a dry run)
#
# Packages the machine lacks come from the wheels in .whl/ (make them here with ../shared/device/fetch_wheels.sh;
# carry .whl with the tree). Writes $OUT/device_check.json and $OUT/device_check.log; exits 1 if a step failed.
# Steps and sizes: tools/device_check.py. Its time on a GPU is not measured yet (aimed at under 8 minutes).
set -uo pipefail
OUT=${OUT:-/tmp/device_check_out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if ! "$PYTHON" -c "import zarr, numcodecs, mrcfile, starfile" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "zarr, mrcfile or starfile missing, and no wheels in .whl/" >&2; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true; } | tee "$OUT/device_check.log"
"$PYTHON" tools/device_check.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/device_check.log"
