"""MRC map files, for ChimeraX and friends."""

import os

import mrcfile
import numpy as np

from hetrec_dist.data.atomic_files import write_atomically
from hetrec_dist.errors import UserError


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


def read_user_map(path, volume=False):
    """(data [z, y, x] float64, pixel size in Å from the header: 0, or not finite, where unset) of a map a
    user gives, or a one-line UserError: unreadable, not a cube, values that are not numbers, or every value
    0; volume: an image stack (MRC space group 0, .mrcs) is refused too."""
    try:
        with mrcfile.open(path, permissive=True) as mrc, np.errstate(divide="ignore", invalid="ignore"):
            data, pixel = mrc.data, float(mrc.voxel_size.x)
            stack = mrc.header is not None and mrc.is_image_stack()
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MRC map ({err})") from None
    if volume and stack:
        raise UserError(f"{path}: an image stack, not a 3-D map")
    if data is None or data.ndim != 3 or len(set(data.shape)) != 1:
        raise UserError(f"{path}: not a cubic 3-D map (shape {None if data is None else data.shape})")
    data = data.astype("float64")
    if not np.isfinite(data).all():
        raise UserError(f"{path}: holds {int((~np.isfinite(data)).sum())} values that are not numbers (NaN or "
                        "infinite)")
    if not data.any():
        raise UserError(f"{path}: an empty map (every value 0)")
    return data, pixel
