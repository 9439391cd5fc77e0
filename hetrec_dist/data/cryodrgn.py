"""cryoDRGN inputs: an .mrcs stack (or a .txt list of stacks) with poses.pkl and ctf.pkl."""

import os
import pickle

import numpy as np

from hetrec_dist.data.particles import ParticleTable, read_stack_shape, resolve_stack_path
from hetrec_dist.errors import UserError


def _load_pickle(path, what):
    if path is None:
        raise UserError(f"a .mrcs or .txt input needs --{what} (cryoDRGN's {what}.pkl)")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"{path}: not a readable pickle ({err})") from None


def _stack_list(path, datadir):
    if path.endswith(".txt"):
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise UserError(f"{path}: lists no stacks")
        return [resolve_stack_path(n, os.path.dirname(os.path.abspath(path)), datadir) for n in names]
    return [resolve_stack_path(path, os.getcwd(), datadir)]


def _poses(poses, n, box, path):
    """poses.pkl is (rotations N x 3 x 3, translations N x 2 as a fraction of the box) or rotations alone."""
    rotations, translations = (poses if isinstance(poses, (tuple, list)) else (poses, None))
    rotations = np.asarray(rotations, dtype=np.float64)
    translations = np.zeros((n, 2)) if translations is None else np.asarray(translations, dtype=np.float64)
    if rotations.shape != (n, 3, 3) or translations.shape != (n, 2):
        raise UserError(f"{path}: poses for {len(rotations)} particles with shapes {rotations.shape}, "
                        f"{translations.shape}, but the stacks hold {n} images")
    return rotations, translations * box


def read_cryodrgn(stack_path, poses_path, ctf_path, datadir=None, apix=None):
    """ParticleTable of cryoDRGN-style inputs; particles are the stacks' images in order."""
    poses, ctf = _load_pickle(poses_path, "poses"), _load_pickle(ctf_path, "ctf")
    stack_paths = _stack_list(stack_path, datadir)
    counts = [read_stack_shape(p)[0] for p in stack_paths]
    n = sum(counts)
    box = read_stack_shape(stack_paths[0])[2]
    ctf = np.asarray(ctf, dtype=np.float64)
    if ctf.shape != (n, 9):
        raise UserError(f"{ctf_path}: CTF parameters of shape {ctf.shape}, but the stacks hold {n} images (need {n} x 9)")
    rotations, shifts_px = _poses(poses, n, box, poses_path)
    pixel_size_A = float(apix if apix is not None else ctf[0, 1])
    ctf[:, 0], ctf[:, 1] = box, pixel_size_A
    return ParticleTable(
        stack_paths=stack_paths,
        stack_of=np.repeat(np.arange(len(counts), dtype=np.int32), counts),
        image_in_stack=np.concatenate([np.arange(c, dtype=np.int64) for c in counts]),
        rotations=rotations, shifts_px=shifts_px, ctf=ctf, optics_group=np.ones(n, np.int32),
        box=box, pixel_size_A=pixel_size_A,
        metadata_files=[os.path.abspath(p) for p in (poses_path, ctf_path)]
        + ([os.path.abspath(stack_path)] if stack_path.endswith(".txt") else []))
