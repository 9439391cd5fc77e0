"""RELION STAR files (3.0 without an optics table, 3.1+ with data_optics) to a ParticleTable."""

import os

import numpy as np
import pandas as pd
import starfile

from hetrec_dist.data.particles import ParticleTable, index_stacks
from hetrec_dist.errors import UserError
from hetrec_dist.physics.rotations import matrices_from_relion_euler

_POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_CTF_PARTICLE_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_OPTICS_VALUE_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


def _read_blocks(path):
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises several types for malformed files
        raise UserError(f"{path}: not a readable STAR file ({err})") from None
    particles = [df for df in blocks.values() if isinstance(df, pd.DataFrame) and "rlnImageName" in df]
    if not particles:
        raise UserError(f"{path}: no data block with rlnImageName")
    optics = blocks.get("optics")
    return particles[0].reset_index(drop=True), optics if isinstance(optics, pd.DataFrame) else None


def _merge_optics(particles, optics, path):
    """Put optics-group values on each particle row (3.1); a 3.0 file carries them per particle."""
    if optics is None:
        return particles.assign(rlnOpticsGroup=particles.get("rlnOpticsGroup", 1))
    if "rlnOpticsGroup" not in particles:
        raise UserError(f"{path}: has a data_optics block but particles have no rlnOpticsGroup")
    missing_groups = set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if missing_groups:
        raise UserError(f"{path}: particles refer to optics groups {sorted(missing_groups)} not in data_optics")
    optics_only = [c for c in optics.columns if c not in particles.columns or c == "rlnOpticsGroup"]
    return particles.merge(optics[optics_only], on="rlnOpticsGroup", how="left", sort=False)


def _pixel_size(df, path, apix):
    if apix is not None:
        return float(apix)
    for column in ("rlnImagePixelSize", "rlnPixelSize"):
        if column in df:
            return _single_value(df[column], column, path)
    if "rlnDetectorPixelSize" in df and "rlnMagnification" in df:
        return _single_value(df["rlnDetectorPixelSize"] * 1e4 / df["rlnMagnification"], "pixel size", path)
    raise UserError(f"{path}: no pixel size (rlnImagePixelSize) in the STAR file; give --apix")


def _single_value(series, name, path):
    values = np.unique(np.asarray(series, dtype=np.float64))
    if len(values) > 1 and not np.allclose(values, values[0], rtol=1e-4):
        raise UserError(f"{path}: {name} differs between particles ({values[:4]}...); convert each optics group separately")
    return float(values[0])


def _require(df, columns, what, path):
    missing = [c for c in columns if c not in df]
    if missing:
        raise UserError(f"{path}: no {what} columns ({', '.join(missing)} missing)")


def _shifts_px(df, pixel_size_A):
    if "rlnOriginXAngst" in df:
        return df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64) / pixel_size_A
    if "rlnOriginX" in df:
        return df[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64)
    return np.zeros((len(df), 2))


def _split_image_names(names, path):
    """'000012@Extract/stack.mrcs' -> (11, 'Extract/stack.mrcs')."""
    split = names.astype(str).str.split("@", n=1, expand=True)
    if split.shape[1] != 2 or split[1].isna().any():
        raise UserError(f"{path}: rlnImageName must be of the form index@stack.mrcs")
    try:
        indices = split[0].astype(np.int64).to_numpy() - 1
    except ValueError:
        raise UserError(f"{path}: rlnImageName has a non-numeric image index") from None
    return indices, split[1].to_numpy()


def read_relion_star(path, datadir=None, apix=None):
    """ParticleTable of a RELION particle STAR file; stacks are resolved but not opened."""
    particles, optics = _read_blocks(path)
    df = _merge_optics(particles, optics, path)
    _require(df, _POSE_COLUMNS, "pose", path)
    _require(df, _CTF_PARTICLE_COLUMNS + _OPTICS_VALUE_COLUMNS, "CTF", path)
    pixel_size_A = _pixel_size(df, path, apix)
    image_in_stack, stack_names = _split_image_names(df["rlnImageName"], path)
    stack_paths, stack_of = index_stacks(stack_names, os.path.dirname(os.path.abspath(path)), datadir)
    box = int(_single_value(df["rlnImageSize"], "rlnImageSize", path)) if "rlnImageSize" in df else None
    ctf = np.stack([
        np.full(len(df), np.nan if box is None else box), np.full(len(df), pixel_size_A),
        df["rlnDefocusU"], df["rlnDefocusV"], df["rlnDefocusAngle"],
        df["rlnVoltage"], df["rlnSphericalAberration"], df["rlnAmplitudeContrast"],
        df["rlnPhaseShift"] if "rlnPhaseShift" in df else np.zeros(len(df)),
    ], axis=1).astype(np.float64)
    return ParticleTable(
        stack_paths=stack_paths, stack_of=stack_of, image_in_stack=image_in_stack,
        rotations=matrices_from_relion_euler(*(df[c].to_numpy(np.float64) for c in _POSE_COLUMNS)),
        shifts_px=_shifts_px(df, pixel_size_A), ctf=ctf,
        optics_group=df["rlnOpticsGroup"].to_numpy(np.int32), box=box, pixel_size_A=pixel_size_A,
        metadata_files=[os.path.abspath(path)])
