"""cryoDRGN inputs: an .mrcs stack (or a .txt list of stacks) with poses and CTF pickles, in every layout
cryoDRGN's own loaders read (cryodrgn.pose.PoseTracker.load, cryodrgn.ctf.load_ctf_for_training):

    poses.pkl   (rotations, translations), (rotations,), or a bare rotations array; or two pickles, the
                rotations and the translations (cryoDRGN's --poses rot.pkl trans.pkl). Rotations are N x 3 x 3
                matrices in the store's convention; translations N x 2 fractions of the box (pixels / D).
                A third element some tools append (N x 3 Euler angles) is not read: the matrices are the poses.
    ctf.pkl     N x 9: D, Apix, defocus U, V (Å), angle (°), kV, Cs (mm), amplitude contrast, phase shift (°),
                where D and Apix describe the images the CTF was estimated on. At the stack's box D' the pixel
                size is D x Apix / D' (cryoDRGN's rule, so a downsampled stack keeps its ctf.pkl).

Arrays may be numpy arrays or torch tensors. Which value wins where two sources disagree: docs/inputs.md.
"""

import os

import numpy as np

from hetrec_dist.data import safe_pickle
from hetrec_dist.data.particles import (
    ParticleTable,
    check_values,
    ctf_constants,
    option_replaces,
    read_stack_header,
    resolve_stack_path,
    search_roots,
    single_value,
)
from hetrec_dist.errors import UserError, warn_input

# A translation beyond half the box puts the particle's centre outside its image: such values are pixels.
MAX_TRANSLATION_FRACTION = 0.5
_POSE_LAYOUTS = "(rotations, translations), (rotations,), or rotations alone"
_CTF_CONSTANT_COLUMNS = {"voltage_kv": (5, "voltage"), "cs_mm": (6, "Cs"),
                         "amplitude_contrast": (7, "amplitude contrast"), "phase_shift_deg": (8, "phase shift")}


def _array(value, path, what):
    """A numpy float64 array of a pickled numpy array or torch tensor."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise UserError(f"{path}: {what} should be a numeric array, found {type(value).__name__}")
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        raise UserError(f"{path}: {what} should be a numeric array, found an array of {value.dtype}")
    return value.astype(np.float64)


def _pose_parts(poses_paths):
    """(rotations, translations or None, the file each came from) from one poses pickle or two."""
    if len(poses_paths) == 2:
        rotations_path, translations_path = poses_paths
        rotations = safe_pickle.load(rotations_path)
        if isinstance(rotations, (tuple, list)) and len(rotations) == 1:
            rotations = rotations[0]
        return (_array(rotations, rotations_path, "the rotations"),
                _array(safe_pickle.load(translations_path), translations_path, "the translations"), poses_paths)
    path = poses_paths[0]
    poses = safe_pickle.load(path)
    if not isinstance(poses, (tuple, list)):
        poses = (poses,)
    if not 1 <= len(poses) <= 3:
        raise UserError(f"{path}: a {type(poses).__name__} of {len(poses)} items; cryoDRGN's poses.pkl holds "
                        f"{_POSE_LAYOUTS}")
    if len(poses) == 3:
        warn_input(f"{path}: its third item ({np.shape(poses[2])}) is not read; the rotation matrices are the poses")
    translations = _array(poses[1], path, "the translations (second item)") if len(poses) > 1 else None
    return _array(poses[0], path, "the rotations (first item)"), translations, (path, path)


def _poses(poses_paths, n, box):
    """(rotations N x 3 x 3, shifts N x 2 in pixels at `box`) from cryoDRGN's pose pickles."""
    rotations, translations, (rotations_path, translations_path) = _pose_parts(poses_paths)
    if rotations.shape != (n, 3, 3):
        looks_like = "; N x 3 looks like Euler angles, but cryoDRGN's poses hold 3 x 3 matrices" if (
            rotations.shape == (n, 3)) else ""
        raise UserError(f"{rotations_path}: rotations of shape {rotations.shape}, but the stacks hold {n} images "
                        f"(need {n} x 3 x 3){looks_like}")
    if translations is None:
        warn_input(f"{rotations_path}: no translations; the shifts are taken as zero")
        return rotations, np.zeros((n, 2))
    if translations.shape != (n, 2):
        raise UserError(f"{translations_path}: translations of shape {translations.shape}, but the stacks hold "
                        f"{n} images (need {n} x 2)")
    largest = float(np.nanmax(np.abs(translations))) if n else 0.0
    if largest > MAX_TRANSLATION_FRACTION:
        raise UserError(f"{translations_path}: translations up to {largest:g}, but cryoDRGN's are fractions of the "
                        f"box (at most {MAX_TRANSLATION_FRACTION}); if these are pixels, divide them by the box "
                        f"({box})")
    return rotations, translations * box


def _ctf_table(ctf_path, n, box, options):
    """(N x 9 CTF at the stack's box, pixel size in Å, its source) from ctf.pkl and the options."""
    ctf = _array(safe_pickle.load(ctf_path), ctf_path, "the CTF parameters")
    if ctf.shape != (n, 9):
        raise UserError(f"{ctf_path}: CTF parameters of shape {ctf.shape}, but the stacks hold {n} images "
                        f"(need {n} x 9)")
    estimated_box = single_value(ctf[:, 0], "the box (column 0)", ctf_path)
    estimated_pixel_size = single_value(ctf[:, 1], "the pixel size (column 1)", ctf_path)
    file_pixel_size = estimated_box * estimated_pixel_size / box
    if estimated_box != box and options.apix is None:
        warn_input(f"{ctf_path}: describes images of box {estimated_box:g} at {estimated_pixel_size:g} Å; the stacks "
                   f"are {box} pixels wide, so their pixel size is {file_pixel_size:g} Å (cryoDRGN's rule)")
    field = (f"the pixel size ({estimated_box:g} x {estimated_pixel_size:g} Å / the stacks' box {box})"
             if estimated_box != box else "the pixel size (column 1)")
    pixel_size_A = float(option_replaces(file_pixel_size, options.apix, "apix", field, ctf_path))
    source = ("--apix" if options.apix is not None
              else f"{ctf_path} (box {estimated_box:g} at {estimated_pixel_size:g} Å)")
    constants = ctf_constants(n, {name: (f"column {column} ({what})", ctf[:, column])
                                  for name, (column, what) in _CTF_CONSTANT_COLUMNS.items()}, options, ctf_path)
    ctf = np.concatenate([np.stack([np.full(n, box), np.full(n, pixel_size_A)], axis=1), ctf[:, 2:5], constants],
                         axis=1)
    return ctf, pixel_size_A, source


def _stack_list(path, datadir):
    if not path.endswith(".txt"):
        return [os.path.abspath(path)]
    try:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file listing stacks, one a line") from None
    if not names:
        raise UserError(f"{path}: lists no stacks")
    return [resolve_stack_path(name, search_roots(path, datadir)) for name in names]


def read_cryodrgn(stack_path, options):
    """ParticleTable of cryoDRGN-style inputs (options: particles.InputOptions with poses and ctf);
    particles are the stacks' images in order."""
    missing = [flag for flag, given in (("--poses", options.poses), ("--ctf", options.ctf)) if not given]
    if missing:
        raise UserError(f"a .mrcs or .txt input needs {' and '.join(missing)} (cryoDRGN's poses.pkl and ctf.pkl)")
    stack_paths = _stack_list(stack_path, options.datadir)
    headers = [read_stack_header(p) for p in stack_paths]
    counts = [h.n_images for h in headers]
    n, box = sum(counts), headers[0].nx
    ctf, pixel_size_A, pixel_size_source = _ctf_table(options.ctf, n, box, options)
    rotations, shifts_px = _poses(tuple(options.poses), n, box)
    table = ParticleTable(
        stack_paths=stack_paths,
        stack_of=np.repeat(np.arange(len(counts), dtype=np.int32), counts),
        image_in_stack=np.concatenate([np.arange(c, dtype=np.int64) for c in counts]),
        rotations=rotations, shifts_px=shifts_px, ctf=ctf, optics_group=np.ones(n, np.int32),
        source_rows=np.arange(n, dtype=np.int64), box=box, pixel_size_A=pixel_size_A,
        pixel_size_source=pixel_size_source,
        metadata_files=list(dict.fromkeys(os.path.abspath(p) for p in (*options.poses, options.ctf)))
        + ([os.path.abspath(stack_path)] if stack_path.endswith(".txt") else []))
    check_values(table, options.poses[0], options.ctf)
    return table
