"""cryoSPARC particle .cs files (numpy structured arrays) to a ParticleTable."""

import os

import numpy as np

from hetrec_dist.data.particles import ParticleTable, index_stacks
from hetrec_dist.errors import UserError
from hetrec_dist.physics.rotations import matrices_from_cryosparc_pose

REQUIRED_FIELDS = (
    "blob/path", "blob/idx", "blob/shape", "blob/psize_A",
    "alignments3D/pose", "alignments3D/shift",
    "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad",
)


def _load(path):
    try:
        records = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable cryoSPARC .cs file ({err})") from None
    if records.dtype.names is None:
        raise UserError(f"{path}: not a cryoSPARC .cs file (no named fields)")
    missing = [f for f in REQUIRED_FIELDS if f not in records.dtype.names]
    if missing:
        raise UserError(f"{path}: the .cs file lacks fields {', '.join(missing)}")
    return records


def _stack_names(records):
    """blob/path values are bytes, sometimes with a leading '>' (cryoSPARC's project-relative marker)."""
    return [(p.decode() if isinstance(p, bytes) else str(p)).lstrip(">") for p in records["blob/path"]]


def read_cryosparc_cs(path, datadir=None, apix=None):
    """ParticleTable of a cryoSPARC .cs file; poses from alignments3D, CTF from ctf/*."""
    records = _load(path)
    names = records.dtype.names
    n = len(records)
    box = int(records["blob/shape"][0][-1])
    pixel_size_A = float(apix if apix is not None else records["blob/psize_A"][0])
    shifts_px = records["alignments3D/shift"].astype(np.float64)
    if "alignments3D/psize_A" in names:  # shifts are in pixels of the refinement's pixel size
        shifts_px = shifts_px * (records["alignments3D/psize_A"].astype(np.float64)[:, None] / pixel_size_A)
    phase_shift = np.degrees(records["ctf/phase_shift_rad"]) if "ctf/phase_shift_rad" in names else np.zeros(n)
    ctf = np.stack([
        np.full(n, box), np.full(n, pixel_size_A), records["ctf/df1_A"], records["ctf/df2_A"],
        np.degrees(records["ctf/df_angle_rad"]), records["ctf/accel_kv"], records["ctf/cs_mm"],
        records["ctf/amp_contrast"], phase_shift,
    ], axis=1).astype(np.float64)
    optics = records["ctf/exp_group_id"].astype(np.int32) if "ctf/exp_group_id" in names else np.ones(n, np.int32)
    stack_paths, stack_of = index_stacks(_stack_names(records), os.path.dirname(os.path.abspath(path)), datadir)
    return ParticleTable(
        stack_paths=stack_paths, stack_of=stack_of, image_in_stack=records["blob/idx"].astype(np.int64),
        rotations=matrices_from_cryosparc_pose(records["alignments3D/pose"]), shifts_px=shifts_px, ctf=ctf,
        optics_group=optics, box=box, pixel_size_A=pixel_size_A, metadata_files=[os.path.abspath(path)])
