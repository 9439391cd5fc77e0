"""MRC map files, for ChimeraX and friends."""

import os

import mrcfile
import numpy as np

from hetrec_dist.data.atomic_files import write_atomically


def write_map(path, volume, pixel_size_A):
    """An MRC map [z, y, x] (the frame of the input particles) with the pixel size in its header, written
    atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(temporary):
        with mrcfile.new(temporary, overwrite=True) as mrc:
            mrc.set_data(np.asarray(volume, dtype=np.float32))
            mrc.voxel_size = pixel_size_A

    write_atomically(path, write)


def read_map(path):
    """The data of an MRC map written by write_map (z, y, x; float32)."""
    return mrcfile.read(path)
