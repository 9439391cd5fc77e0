"""The particle table: what a source file (STAR, .cs, pkl) says about each particle, before conversion."""

import dataclasses
import os

import mrcfile
import numpy as np

from hetrec_dist.errors import UserError


@dataclasses.dataclass
class ParticleTable:
    """Per-particle metadata in the store's conventions (see hetrec_dist.physics.rotations).

    stack_paths: the image stacks, resolved; stack_of[i], image_in_stack[i] locate particle i (0-based).
    rotations: N x 3 x 3; shifts_px: N x 2 in pixels at `box`; ctf: N x 9 (physics.ctf.CTF_COLUMNS);
    optics_group: N; metadata_files: the files the table was read from (recorded with checksums).
    """

    stack_paths: list
    stack_of: np.ndarray
    image_in_stack: np.ndarray
    rotations: np.ndarray
    shifts_px: np.ndarray
    ctf: np.ndarray
    optics_group: np.ndarray
    box: int
    pixel_size_A: float
    metadata_files: list

    def __len__(self):
        return len(self.stack_of)


def resolve_stack_path(path, metadata_dir, datadir=None):
    """Find a stack named in a metadata file: absolute, under --datadir (as named, or by base name), or
    relative to the metadata file (as named, or by base name)."""
    roots = ([datadir] if datadir else []) + [metadata_dir]
    candidates = [path] if os.path.isabs(path) else []
    for root in roots:
        candidates += [os.path.join(root, path), os.path.join(root, os.path.basename(path))]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    looked = ", ".join(dict.fromkeys(candidates))
    raise UserError(f"image stack {path!r} not found (looked for {looked}); use --datadir to say where stacks are")


def index_stacks(stack_names, metadata_dir, datadir=None):
    """Resolve each distinct stack name once: returns (resolved paths, index of each name's stack)."""
    unique_names, stack_of = np.unique(np.asarray(stack_names, dtype=str), return_inverse=True)
    paths = [resolve_stack_path(name, metadata_dir, datadir) for name in unique_names]
    return paths, stack_of.astype(np.int32)


def read_stack_shape(path):
    """(n_images, ny, nx) of an MRC stack, reading only its header."""
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
            header = mrc.header
            shape = (int(header.nz), int(header.ny), int(header.nx))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MRC stack ({err})") from None
    if min(shape) <= 0:
        raise UserError(f"{path}: not a readable MRC stack (header says shape {shape})")
    return shape


def check_stacks(table):
    """Every stack exists, is square at the table's box, and holds every index that points into it.
    A table that does not know its box (RELION 3.0) takes it from the first stack."""
    if table.box is None:
        table.box = read_stack_shape(table.stack_paths[0])[2]
        table.ctf[:, 0] = table.box
    for stack, path in enumerate(table.stack_paths):
        n_images, ny, nx = read_stack_shape(path)
        if ny != nx:
            raise UserError(f"{path}: images are not square ({nx} x {ny} pixels)")
        if nx != table.box:
            raise UserError(f"{path}: images are {nx} pixels wide but the metadata says {table.box}")
        indices = table.image_in_stack[table.stack_of == stack]
        if indices.size and (indices.min() < 0 or indices.max() >= n_images):
            bad = indices[(indices < 0) | (indices >= n_images)][0]
            raise UserError(f"{path}: image index {bad + 1} (1-based) is out of range; the stack holds {n_images} images")


def open_stack(path):
    """A memory map of an MRC stack's images (n x D x D); a single image file reads as a stack of one."""
    try:
        mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MRC stack ({err})") from None
    data = mrc.data
    if data is None:
        raise UserError(f"{path}: not a readable MRC stack (no data)")
    return data if data.ndim == 3 else data[np.newaxis]
