"""MRC map files, for ChimeraX and friends."""

import os

import mrcfile
import numpy as np


def write_map(path, volume, pixel_size_A):
    """An MRC map [z, y, x] (the frame of the input particles) with the pixel size in its header, written
    atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with mrcfile.new(path + ".tmp", overwrite=True) as mrc:
        mrc.set_data(np.asarray(volume, dtype=np.float32))
        mrc.voxel_size = pixel_size_A
    os.replace(path + ".tmp", path)
