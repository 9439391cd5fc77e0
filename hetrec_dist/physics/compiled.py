"""The projector's inner loops compiled on the fly (slice_kernels.c), for CPU tensors; None where they cannot be.
The same library holds the basis optimizer's step (train.row_adam) and backprojection's (analysis.reconstruct).

Why: in PyTorch's operations the transposed interpolation needs T^T as a CSR matrix, and building it means
sorting the batch's 8 x B x P entries, which was most of a CPU training step (docs/benchmarks.md). The loops
in C need no sort, prefetch the rows they gather, and keep nothing of size B x P x 2(K+1).

How: the system's C compiler (`cc`, or $CC) builds slice_kernels.c once into a shared library in
$HETREC_CACHE_DIR (default ~/.cache/hetrec_dist), named by a hash of the source, compiler and flags; ctypes
loads it. Plain C and ctypes rather than torch.utils.cpp_extension: it builds in a fraction of a second,
without PyTorch's headers or ninja. With -fopenmp the library needs libgomp.so.1, which the one PyTorch has
loaded already satisfies, so its loops run on PyTorch's own threads (torch.set_num_threads); a compiler
without OpenMP gives a one-thread library.

Without a compiler, or where the build fails, kernels_for() is None and the projector takes PyTorch's path (a
PerformanceWarning says so once): the same values, slower. HETREC_COMPILED_KERNELS=0 chooses that path without
a warning. On GPUs the PyTorch path is the one taken.
"""

import ctypes
import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from hetrec_dist.errors import PerformanceWarning

SOURCE = Path(__file__).with_name("slice_kernels.c")
# no -march=native: a cached library may be loaded on another node's CPU; -ffp-contract=off: no fused
# multiply-adds, so that the values equal PyTorch's bit for bit where the order of the sums is the same
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-std=c99"]
OPENMP = ["-fopenmp"]
_SIGNATURES = {  # each kernel's arguments: int64 (i), float32 (f) or pointer (p)
    "corners": "piipipipppppp",
    "project": "ppiiipppppp",
    "weights_gradient": "ppiiipppppp",
    "scatter": "pppiiippppppipp",
    "interpolate": "piippp",
    "adam_rows": "pppppiiffff",
    "insert": "piipippiip",
}
_REPORTING = ("corners", "project", "weights_gradient")  # return -1 where their scratch memory ran out, else 0


def _enabled() -> bool:
    return os.environ.get("HETREC_COMPILED_KERNELS", "1") != "0"


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hetrec_dist"
    return Path(os.environ.get("HETREC_CACHE_DIR", default))


def _build(compiler: str, flags: list[str]) -> Path:
    """The library's path, built first where no build of this source, compiler and flags exists. Several
    processes may build at once: each writes its own temporary and renames it into place."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    for directory in (_cache_dir(), Path(tempfile.gettempdir()) / "hetrec_dist"):
        library = directory / f"slice_kernels-{key}.so"
        if library.exists():
            return library
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(suffix=".so", dir=directory)
        except OSError:
            continue  # not writable: the next place
        os.close(handle)
        try:
            subprocess.run([compiler, *flags, "-o", temporary, str(SOURCE), "-lm"], check=True,
                           capture_output=True, text=True, timeout=120)
            os.replace(temporary, library)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return library
    raise OSError("no writable folder for the compiled library (set HETREC_CACHE_DIR)")


@functools.cache
def _kernels() -> "Kernels | None":
    name = os.environ.get("CC", "cc")
    compiler, error = shutil.which(name), None
    for flags in ([*FLAGS, *OPENMP], FLAGS) if compiler else ():
        try:
            library = ctypes.CDLL(str(_build(compiler, flags)))
            break
        except (OSError, subprocess.SubprocessError) as err:
            error = getattr(err, "stderr", None) or str(err)
    else:
        detail = f"no C compiler ({name}) on the PATH" if compiler is None else error.strip().splitlines()[-1]
        warnings.warn(PerformanceWarning(
            f"the projector's compiled kernels are unavailable ({detail}): using PyTorch's operations, the same "
            "values, slower on the CPU"), stacklevel=3)
        return None
    for kernel, arguments in _SIGNATURES.items():
        getattr(library, kernel).argtypes = [{"i": ctypes.c_int64, "f": ctypes.c_float, "p": ctypes.c_void_p}[a]
                                             for a in arguments]
        getattr(library, kernel).restype = ctypes.c_int if kernel in _REPORTING else None
    return Kernels(library)


@dataclasses.dataclass
class ImageRows:
    """Each image's distinct basis rows (slice_kernels.c says why): rows (B x 8P int32, the first counts[b] of
    image b's), counts (B int32), starts (B int64: where each image's rows begin among all images'), and each
    corner's place in its image's list (slots, B x P x 8 int32)."""
    rows: torch.Tensor
    counts: torch.Tensor
    starts: torch.Tensor
    slots: torch.Tensor


class Kernels:
    """The compiled loops. Arguments: contiguous float32 CPU tensors (int32 rows, bool flipped); shapes as in
    physics.projector (B images x P points, 8 corners a point, K+1 components). MemoryError where a loop's
    scratch memory could not be had."""

    def __init__(self, library: ctypes.CDLL):
        self._library = library

    def _call(self, name, *arguments):
        """Kernel `name` on arguments, tensors passed as their data pointers (None as NULL)."""
        status = getattr(self._library, name)(*(a.data_ptr() if isinstance(a, torch.Tensor) else a
                                                for a in arguments))
        if status not in (None, 0):
            raise MemoryError(f"the projector's {name} ran out of memory")

    def corners(self, k3: torch.Tensor, lookup: torch.Tensor, extent: int, row_offsets: torch.Tensor | None,
                n_rows: int) -> tuple:
        """(flipped B x P bool, corner weights B x P x 8, touched n_rows bool, ImageRows) of points k3 (B x P x 3,
        voxels) in a half-ball's lookup; row_offsets: B int32, or None."""
        n_images, n_points = k3.shape[:2]
        flipped, weights = torch.empty(n_images, n_points, dtype=torch.bool), k3.new_empty(n_images, n_points, 8)
        touched = torch.zeros(n_rows, dtype=torch.bool)
        slots = torch.empty(n_images, n_points, 8, dtype=torch.int32)
        image_rows = torch.empty(n_images, 8 * n_points, dtype=torch.int32)
        counts = torch.empty(n_images, dtype=torch.int32)
        self._call("corners", k3, n_images, n_points, lookup, extent, row_offsets, n_rows, flipped, weights,
                   touched, slots, image_rows, counts)
        starts = torch.cumsum(counts, 0, dtype=torch.int64) - counts
        return flipped, weights, touched, ImageRows(image_rows, counts, starts, slots)

    def project(self, basis: torch.Tensor, weights: torch.Tensor, flipped: torch.Tensor, corner_weights: torch.Tensor,
                image_rows: ImageRows) -> torch.Tensor:
        """Slices B x P x 2 (re, im): sum_k weights_k basis_k interpolated at each point, conjugated where
        flipped."""
        slices = basis.new_empty(*flipped.shape, 2)
        self._call("project", basis, weights, weights.shape[1], *flipped.shape, flipped, image_rows.slots,
                   corner_weights, image_rows.rows, image_rows.counts, slices)
        return slices

    def weights_gradient(self, basis: torch.Tensor, grad_slices: torch.Tensor, flipped: torch.Tensor,
                         corner_weights: torch.Tensor, image_rows: ImageRows, n_components: int) -> torch.Tensor:
        """B x K+1: the gradient of project's slices with respect to the weights, given grad_slices."""
        grad = basis.new_empty(flipped.shape[0], n_components)
        self._call("weights_gradient", basis, grad_slices, n_components, *flipped.shape, flipped, image_rows.slots,
                   corner_weights, image_rows.rows, image_rows.counts, grad)
        return grad

    def scatter(self, grad_slices: torch.Tensor, flipped: torch.Tensor, weights: torch.Tensor,
                corner_weights: torch.Tensor, image_rows: ImageRows, column_of_row: torch.Tensor,
                n_touched: int) -> torch.Tensor:
        """n_touched x 2(K+1): sum over points of corner weight x (conj(grad_slice) x image weights), each in
        the row column_of_row[row]; the same values at any number of threads."""
        n_components = weights.shape[1]
        sums = weights.new_empty(2 * int(image_rows.counts.sum()))
        grad = weights.new_zeros(n_touched, 2 * n_components)
        self._call("scatter", grad_slices, flipped, weights, n_components, *flipped.shape, image_rows.slots,
                   corner_weights, image_rows.rows, image_rows.counts, image_rows.starts, column_of_row, n_touched,
                   sums, grad)
        return grad

    def interpolate(self, basis: torch.Tensor, rows: torch.Tensor, corner_weights: torch.Tensor) -> torch.Tensor:
        """(B * P) x C: each point's corner rows of basis (n_rows x C) weighted by corner_weights."""
        n_points = rows.numel() // 8
        out = basis.new_empty(n_points, basis.shape[1])
        self._call("interpolate", basis, basis.shape[1], n_points, rows, corner_weights, out)
        return out

    def adam_rows(self, param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, rows: torch.Tensor,
                  grad: torch.Tensor, betas: tuple[float, float], eps: float, step_size: float) -> None:
        """SparseAdam's step, in place, on the rows (int64) of param and its moments (n_rows x C) that grad
        (len(rows) x C) holds (train.row_adam)."""
        beta1, beta2 = betas
        self._call("adam_rows", param, exp_avg, exp_avg_sq, rows, grad, len(rows), param.shape[1], 1 - beta1,
                   1 - beta2, eps, -step_size)


    def insert(self, k3: torch.Tensor, lookup: torch.Tensor, extent: int, row_offsets: torch.Tensor | None,
               values: torch.Tensor, sums: torch.Tensor) -> None:
        """sums (n_rows x C float64) += each point's values (B x P x C; C even: (re, im) pairs, conjugated where
        the point is Friedel-flipped) times its corners' trilinear weights, at their rows (slice_kernels.c)."""
        n_images, n_points = k3.shape[:2]
        self._call("insert", k3, n_images, n_points, lookup, extent, row_offsets, values, values.shape[-1],
                   sums.shape[0], sums)


def kernels_for(tensor: torch.Tensor) -> Kernels | None:
    """The compiled loops where tensor is a float32 CPU tensor and they are available and enabled
    (HETREC_COMPILED_KERNELS is not 0); else None (use PyTorch's operations)."""
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32 or not _enabled():
        return None
    return _kernels()
