"""Process memory: measuring the peak, and keeping freed tensor memory from piling up in the heap."""

import ctypes
import resource
import sys

import torch

_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 16 << 20


def return_freed_memory_to_os():
    """glibc raises its mmap threshold after large blocks are freed, after which each step's tens of MB
    of temporaries come from the heap and fragment it (peak RSS 940-1000 MiB at box 64, batch 256). A
    fixed threshold keeps tensors above it in their own mappings, returned to the OS when freed; each
    fresh mapping costs page faults, so the threshold trades speed for memory. Measured with
    tools/bench_train.py's model on 2 cores: 1 MiB 936 img/s, 691 MiB; 16 MiB 1371 img/s, 880 MiB;
    64 MiB 1676 img/s, 1052 MiB; glibc's default 1691-1780 img/s, 940-1000 MiB."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
            pass


def peak_memory_mib(device):
    """Peak GPU memory allocated on CUDA; otherwise the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
