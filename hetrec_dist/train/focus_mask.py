"""Focused heterogeneity (`hetrec train --focus-mask MASK.mrc`): the K basis volumes confined to a mask.

The model's map at z is mean + sum_k w_k(z) basis_k. With a focus mask, every basis volume is confined to it
(times the usual envelope, HetVAE.confine_basis; physics.maps.SupportProjector.set_focus), and the mean stays
free in the envelope: the latent space can describe only what varies inside the mask, and everything outside
is the mean over the particles. A motion that crosses the mask's edge is seen only where it is inside.

The mask is an MRC map in the particles' frame (as RELION's relion_mask_create, cryoSPARC and ChimeraX write
one): values from 0 to 1, the store's box and pixel size (another box of the same extent is resampled, with a
warning). A binary mask gets a soft edge (a raised cosine over SOFT_EDGE_FRACTION of the box outside it). The
run keeps the mask as trained, RUN/focus_mask.mrc, and its checksum in every checkpoint; a resumed run must be
given the same mask (or none: it takes its own copy).
"""

import dataclasses
import hashlib
import os

import numpy as np
from scipy import ndimage

from hetrec_dist.data.map_files import read_user_map, write_map
from hetrec_dist.errors import UserError, warn_input

FOCUS_MASK_FILE = "focus_mask.mrc"
SOFT_EDGE_FRACTION = 0.05  # of the box: the soft edge a binary mask gets (the basis sphere's edge too)
MOST_COVERED = 0.95        # of the box above 0.5: a mask covering more is no focus
SAME_EXTENT = 5e-3         # relative: a mask's box x pixel size this close to the store's is the same extent


@dataclasses.dataclass
class FocusMask:
    values: np.ndarray  # box^3 float32 [z, y, x] in [0, 1], centred at box // 2, as the store's maps
    source: str         # where it came from, for the user

    @property
    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.values, dtype=np.float32).tobytes()).hexdigest()

    def describe(self) -> str:
        return (f"focused on {self.source}: the basis volumes are confined to it ({100 * self.values.mean():.0f}% "
                "of the box); outside it every map is the mean")


def read_focus_mask(path, box, pixel_size_A) -> FocusMask:
    """The focus mask at `path` for a store of `box` pixels of `pixel_size_A`, checked and made soft (see the
    module). Raises UserError for a map that is not a mask, or whose extent is not the store's."""
    data, mask_pixel_A = read_user_map(path)
    mask_box = data.shape[0]
    if mask_pixel_A <= 0:  # an unset header: only a mask of the store's box can be placed
        if mask_box != box:
            raise UserError(f"{path}: box {mask_box} without a pixel size in its header; the particles are box "
                            f"{box} of {pixel_size_A:g} Å: give a mask of box {box}, or one with its pixel size")
        mask_pixel_A = pixel_size_A
    extent_A, store_extent_A = mask_box * mask_pixel_A, box * pixel_size_A
    if abs(extent_A - store_extent_A) > SAME_EXTENT * store_extent_A:
        raise UserError(f"{path}: box {mask_box} of {mask_pixel_A:g} Å ({extent_A:g} Å across), but the particles "
                        f"are box {box} of {pixel_size_A:g} Å ({store_extent_A:g} Å): make the mask on the "
                        "particles' box (e.g. relion_image_handler --rescale_angpix and --new_box)")
    low, high = float(data.min()), float(data.max())
    if low < -0.01 or high > 1.01:
        raise UserError(f"{path}: values from {low:.3g} to {high:.3g}; a mask holds values from 0 to 1 (a map of "
                        "density is no mask: make one with relion_mask_create or ChimeraX's volume mask)")
    data = np.clip(data, 0, 1)
    if mask_box != box:
        warn_input(f"{path}: box {mask_box} of {mask_pixel_A:g} Å resampled to the particles' box {box} of "
                   f"{pixel_size_A:g} Å")
        data = resample_centred(data, box)
    if np.isin(data, (0.0, 1.0)).all():
        data = soft_edge(data, SOFT_EDGE_FRACTION * box)
    covered = float((data > 0.5).mean())
    if covered == 0:
        raise UserError(f"{path}: the mask keeps nothing (no value above 0.5)")
    if covered > MOST_COVERED:
        raise UserError(f"{path}: the mask covers {100 * covered:.0f}% of the box, so it focuses on nothing; train "
                        "without --focus-mask for the whole particle")
    return FocusMask(data.astype(np.float32), os.path.abspath(path))


def resample_centred(volume, box):
    """A map [z, y, x] centred at D // 2, resampled (trilinear) to box^3 centred at box // 2, same extent."""
    size = volume.shape[0]
    positions = size // 2 + (np.arange(box) - box // 2) * size / box
    grid = np.meshgrid(positions, positions, positions, indexing="ij")
    return ndimage.map_coordinates(volume, grid, order=1, mode="constant", cval=0.0)


def soft_edge(binary, width_px):
    """A binary mask with a raised-cosine edge falling from 1 to 0 over width_px outside it (as RELION's
    relion_mask_create --width_soft_edge)."""
    distance = ndimage.distance_transform_edt(binary < 0.5)
    return np.where(distance <= 0, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip(distance / width_px, 0, 1))))


def load(config_path, run_dir, box, pixel_size_A, saved) -> FocusMask | None:
    """The run's focus mask: config_path's (the --focus-mask or config.yaml's setting) for a new run; for a
    resumed one (`saved`: its checkpoint), the one it trained with, which a mask given again must equal.
    Raises UserError where they differ, or where one has a mask and the other none."""
    trained_sha = None if saved is None else saved.get("focus_mask_sha256")
    if saved is None:
        return read_focus_mask(config_path, box, pixel_size_A) if config_path else None
    if trained_sha is None:
        if config_path:
            raise UserError(f"{run_dir} was trained without a focus mask; resume it without --focus-mask")
        return None
    own = os.path.join(run_dir, FOCUS_MASK_FILE)
    given = config_path if config_path and os.path.exists(config_path) else own
    if not os.path.exists(given):
        raise UserError(f"{run_dir} was trained with a focus mask, but {own} is gone; give it again with "
                        "--focus-mask")
    mask = read_focus_mask(given, box, pixel_size_A)
    if mask.sha256 != trained_sha:
        raise UserError(f"{given}: not the focus mask {run_dir} was trained with ({own}); resume with that one, "
                        "or train a new run with this mask")
    return mask


def write(run_dir, mask: FocusMask, pixel_size_A):
    """RUN/focus_mask.mrc: the mask as the run trains with it (soft, on the particles' box)."""
    write_map(os.path.join(run_dir, FOCUS_MASK_FILE), mask.values, pixel_size_A)
