"""Particle subsets back in the input's own format: RELION STAR, cryoSPARC .cs, or cryoDRGN index .pkl; and
a run's refined poses as cryoDRGN's poses.pkl."""

import os

import numpy as np
import numpy.lib.recfunctions
import starfile

from hetrec_dist.data.atomic_files import save_pickle, write_atomically
from hetrec_dist.data.checksums import sha256_file
from hetrec_dist.data.cryosparc import HALF_SET_FIELD, read_cs_records
from hetrec_dist.data.relion import read_star_blocks
from hetrec_dist.errors import UserError
from hetrec_dist.physics.rotations import cryosparc_pose_from_matrices, relion_euler_from_matrices


def cluster_members(labels, clusters, k):
    missing = sorted(set(clusters) - set(range(k)))
    if missing:
        raise UserError(f"cluster(s) {', '.join(map(str, missing))} do not exist (clusters are 0 to {k - 1})")
    return np.flatnonzero(np.isin(labels, clusters))


def _source_metadata(store_attrs):
    """The metadata files the store was converted from, each unchanged since (their SHA-256 is recorded)."""
    paths = []
    for source in store_attrs["sources"]["metadata"]:
        path = source["path"]
        if not os.path.isfile(path):
            raise UserError(f"{path}: the file the store was converted from is gone; cannot write a subset of it")
        if sha256_file(path) != source["sha256"]:
            raise UserError(f"{path}: changed since the store was made; cannot match its rows to particles")
        paths.append(path)
    return paths


def write_subset(indices, store_attrs, source_rows, out, half_sets=None, poses=None, ctf=None):
    """Write the particles at store `indices` to `out` (.star, .cs or .pkl). source_rows (N): each stored
    particle's row in the metadata file (store.source_row). A .star or .cs subset keeps every field of the
    input; a .cs made from a particles .cs and its passthrough .cs holds the fields of both. A .pkl holds
    the particles' 0-based rows in the input (cryoDRGN's --ind for the same STAR, .cs or stack: the input's
    terms, also where the store holds a part of it). half_sets (N, 1 or 2; a run trained with half-sets): each
    particle's half-set goes into rlnRandomSubset (.star) or alignments3D/split (.cs, 0 or 1), replacing the
    input's, so that a refinement of the subset keeps the run's halves apart. poses (rotations N x 3 x 3 in the
    store's convention, shifts N x 2 in pixels at the store's box; a run that refined its poses): written
    into the pose fields, in the input's units (_star_poses, _cs_poses). ctf (N x 9, the store's ctf columns;
    a run that refined its CTFs): the defoci written into rlnDefocusU/V/Angle or ctf/df1_A, df2_A,
    df_angle_rad."""
    extension = os.path.splitext(out)[1].lower()
    if extension == ".pkl":
        save_pickle(out, np.asarray(source_rows, dtype=np.int64)[indices])
        return
    sources = _source_metadata(store_attrs)
    if any(os.path.realpath(out) == os.path.realpath(source) for source in sources):
        raise UserError(f"{out} is the file the store was converted from; write to another file")
    source_extension = os.path.splitext(sources[0])[1].lower()
    if extension != source_extension:
        raise UserError(f"{out}: the particles came from {sources[0]}; write a {source_extension} subset "
                        "(or a .pkl of indices)")
    rows = np.asarray(source_rows)[indices]
    halves = None if half_sets is None else np.asarray(half_sets)[indices]
    chosen = None if poses is None else (np.asarray(poses[0])[indices], np.asarray(poses[1])[indices])
    defoci = None if ctf is None else np.asarray(ctf, np.float64)[indices, 2:5]
    if extension == ".star":
        blocks, name = read_star_blocks(sources[0])
        blocks[name] = blocks[name].iloc[rows].reset_index(drop=True)
        if halves is not None:
            blocks[name]["rlnRandomSubset"] = halves.astype(int)
        if chosen is not None:
            _star_poses(blocks[name], *chosen, store_attrs)
        if defoci is not None:
            for column, values in zip(("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"), defoci.T):
                blocks[name][column] = values
        write_atomically(out, lambda temporary: starfile.write(blocks, temporary))
    elif extension == ".cs":
        records, _ = read_cs_records(sources[0], sources[1] if len(sources) > 1 else None)
        records = records[rows]
        if halves is not None:
            split = (halves - 1).astype(np.uint32)
            if HALF_SET_FIELD in records.dtype.names:
                records[HALF_SET_FIELD] = split
            else:
                records = numpy.lib.recfunctions.append_fields(records, HALF_SET_FIELD, split, usemask=False)
        if chosen is not None:
            _cs_poses(records, *chosen, store_attrs)
        if defoci is not None:
            records["ctf/df1_A"], records["ctf/df2_A"] = defoci[:, 0], defoci[:, 1]
            records["ctf/df_angle_rad"] = np.radians(defoci[:, 2])
        write_atomically(out, lambda temporary: _save_records(temporary, records))
    else:
        raise UserError(f"{out}: write .star, .cs or .pkl")


def _save_records(path, records):
    with open(path, "wb") as f:  # a file object: np.save would add .npy to the name
        np.save(f, records)


def _shifts_A(shifts_px, store_attrs):
    return np.asarray(shifts_px, np.float64) * store_attrs["pixel_size_A"]


def _star_poses(table, rotations, shifts_px, store_attrs):
    """Poses into a RELION particles table, in place: rlnAngleRot/Tilt/Psi (physics.rotations), and the shifts
    as rlnOriginXAngst/YAngst (Å) and, where the table has them, rlnOriginX/Y (pixels of the input)."""
    table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = relion_euler_from_matrices(rotations)
    shifts_A = _shifts_A(shifts_px, store_attrs)
    if "rlnOriginXAngst" in table or "rlnOriginX" not in table:
        table["rlnOriginXAngst"], table["rlnOriginYAngst"] = shifts_A[:, 0], shifts_A[:, 1]
    if "rlnOriginX" in table:
        shifts_input_px = shifts_A / store_attrs["original_pixel_size_A"]
        table["rlnOriginX"], table["rlnOriginY"] = shifts_input_px[:, 0], shifts_input_px[:, 1]


def _cs_poses(records, rotations, shifts_px, store_attrs):
    """Poses into cryoSPARC records, in place: alignments3D/pose (axis-angle) and alignments3D/shift, in pixels
    of alignments3D/psize_A where the records have it, else of the input's pixel size (as the reader takes
    them)."""
    records["alignments3D/pose"] = cryosparc_pose_from_matrices(rotations)
    shift_pixel_A = (records["alignments3D/psize_A"].astype(np.float64)[:, None]
                     if "alignments3D/psize_A" in records.dtype.names else store_attrs["original_pixel_size_A"])
    records["alignments3D/shift"] = _shifts_A(shifts_px, store_attrs) / shift_pixel_A


def write_cryodrgn_ctf(out, ctf, store_attrs):
    """cryoDRGN's ctf.pkl (N x 9 float32, physics.ctf.CTF_COLUMNS) of the store's ctf columns (N x 9), its
    box and pixel size those of the input's images, as cryoDRGN's parse_ctf_star writes them."""
    table = np.array(ctf, np.float64)
    table[:, 0], table[:, 1] = store_attrs["original_box"], store_attrs["original_pixel_size_A"]
    save_pickle(out, table.astype(np.float32))


def write_cryodrgn_poses(out, rotations, shifts_px, box):
    """cryoDRGN's poses.pkl: (rotations N x 3 x 3, translations N x 2 as fractions of the box), float32."""
    poses = (np.asarray(rotations, np.float32), (np.asarray(shifts_px, np.float64) / box).astype(np.float32))
    save_pickle(out, poses)
