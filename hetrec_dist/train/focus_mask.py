"""Focused heterogeneity (`hetrec train --focus-mask MASK.mrc`): the K basis volumes confined to a mask.

The model's map at z is mean + sum_k w_k(z) basis_k. With a focus mask, every basis volume is confined to it
(times the usual envelope, HetVAE.confine_basis; physics.maps.SupportProjector.set_focus), and the mean stays
free in the envelope: the latent space can describe only what varies inside the mask, and everything outside
is the mean over the particles. A motion that crosses the mask's edge is seen only where it is inside.

The mask is an MRC map in the particles' frame (as RELION's relion_mask_create, cryoSPARC and ChimeraX write
one): values from 0 to 1, the store's box and pixel size (another box of the same extent is resampled, with a
warning). A binary mask gets a soft edge (a raised cosine over SOFT_EDGE_FRACTION of the box outside it). The
run keeps the mask as trained, RUN/focus_mask.mrc, and its checksum in every checkpoint; a resumed run takes
its own copy, and a mask given again must be the same.
"""

import dataclasses
import hashlib
import os

import numpy as np
import torch
from scipy import ndimage

from hetrec_dist.data.map_files import read_user_map, write_map
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.errors import UserError, warn_input
from hetrec_dist.physics.maps import sample_centred

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
    data, mask_pixel_A = read_user_map(path, volume=True)
    mask_box = data.shape[0]
    if not mask_pixel_A > 0:  # an unset (or broken) header: only a mask of the store's box can be placed
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
    if ((data < 1e-6) | (data > 1 - 1e-6)).all():  # binary: soft-edged on its own grid, before any resampling
        data = soft_edge(np.round(data), SOFT_EDGE_FRACTION * mask_box)
    if mask_box != box:
        warn_input(f"{path}: box {mask_box} of {mask_pixel_A:g} Å resampled to the particles' box {box} of "
                   f"{pixel_size_A:g} Å")
        data = sample_centred(torch.from_numpy(data), torch.arange(box) - box // 2, mask_box / box).numpy()
    covered = float((data > 0.5).mean())
    if covered == 0:
        raise UserError(f"{path}: the mask keeps nothing (no value above 0.5)")
    if covered > MOST_COVERED:
        raise UserError(f"{path}: the mask covers {100 * covered:.0f}% of the box, so it focuses on nothing; train "
                        "without --focus-mask for the whole particle")
    return FocusMask(data.astype(np.float32), os.path.abspath(path))


def soft_edge(binary, width_px):
    """A binary mask with a raised-cosine edge falling from 1 to 0 over width_px outside it (as RELION's
    relion_mask_create --width_soft_edge)."""
    distance = ndimage.distance_transform_edt(binary < 0.5)
    return np.where(distance <= 0, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip(distance / width_px, 0, 1))))


def for_new_run(config_path, box, pixel_size_A) -> FocusMask | None:
    """A new run's focus mask (None without one), read before its folder is made or emptied."""
    return read_focus_mask(config_path, box, pixel_size_A) if config_path else None


def for_resumed_run(config_path, run_dir, box, pixel_size_A, saved) -> FocusMask | None:
    """The focus mask a resumed run (`saved`: its checkpoint) trained with: its own copy, RUN/focus_mask.mrc,
    unless another mask is given (config_path other than the path it was trained with), which must then be the
    same mask. Where the copy is gone or changed, the mask at the trained path, if it is still the same.
    Raises UserError where masks differ, or where one has a mask and the other none."""
    trained_sha = saved.get("focus_mask_sha256")
    trained_path = saved.get("config", {}).get("focus_mask") or ""
    if trained_sha is None:
        if config_path:
            raise UserError(f"{run_dir} was trained without a focus mask; resume it without --focus-mask")
        return None
    if not config_path:
        raise UserError(f"{run_dir} was trained with a focus mask ({trained_path}); resume it with that mask")
    own = RunFolder(run_dir).focus_mask
    given = config_path != trained_path
    for path in ([config_path] if given else [own, trained_path]):
        mask = _read_if_there(path, box, pixel_size_A, reraise=given)
        if mask is not None and mask.sha256 == trained_sha:
            return mask
        if given:
            raise UserError(f"{config_path}: not the focus mask {run_dir} was trained with ({own}); resume "
                            "without --focus-mask to keep that one, or train a new run with this mask")
    raise UserError(f"{own} is gone or changed, and {trained_path} is not the mask {run_dir} was trained with "
                    "either: put the run's mask back, or train a new run")


def _read_if_there(path, box, pixel_size_A, reraise):
    try:
        return read_focus_mask(path, box, pixel_size_A)
    except UserError:
        if reraise:
            raise
        return None


def check_inside(projector, mask: FocusMask) -> None:
    """Refuse a focus mask that lies mostly outside the sphere the basis is confined to (--mask-diameter),
    where nothing is modelled; warn where a part of it does. projector: the run's SupportProjector, its
    focus set."""
    focus, sphere = projector.focus, projector.sphere
    inside = float((focus * sphere).sum() / focus.sum().clamp_min(1e-12))
    if inside < 0.5:
        raise UserError(f"{mask.source}: {100 * inside:.0f}% of the focus mask lies inside the sphere the model "
                        "covers (--mask-diameter, default 90% of the box); focus on a part of the particle")
    if inside < 0.95:
        warn_input(f"{mask.source}: {100 * (1 - inside):.0f}% of the focus mask lies outside the sphere the model "
                   "covers (--mask-diameter), where nothing is modelled")


def write(run_dir, mask: FocusMask, pixel_size_A):
    """RUN/focus_mask.mrc: the mask as the run trains with it (soft, on the particles' box)."""
    write_map(RunFolder(run_dir).focus_mask, mask.values, pixel_size_A)
