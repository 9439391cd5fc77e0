"""RELION STAR files (3.0 without an optics table, 3.1+ with data_optics) to a ParticleTable.

Which field gives each quantity, and what happens when two disagree: docs/inputs.md.
"""

import os

import numpy as np
import pandas as pd
import starfile

from hetrec_dist.data.particles import (
    PIXEL_SIZE_RTOL,
    ParticleTable,
    check_ctf_envelope,
    check_values,
    ctf_constants,
    describe_values,
    half_sets_or_none,
    index_stacks,
    optics_group_hint,
    option_replaces,
    search_roots,
    select_optics_groups,
    single_value,
)
from hetrec_dist.errors import UserError, warn_input
from hetrec_dist.physics.rotations import matrices_from_relion_euler

_POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_CTF_PARTICLE_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_CTF_CONSTANT_COLUMNS = {"voltage_kv": "rlnVoltage", "cs_mm": "rlnSphericalAberration",
                         "amplitude_contrast": "rlnAmplitudeContrast", "phase_shift_deg": "rlnPhaseShift"}
_PIXEL_SIZE_SOURCES = (  # in order of precedence: (name, columns, the images' pixel size in Å from them)
    ("rlnImagePixelSize", ("rlnImagePixelSize",), lambda df: df["rlnImagePixelSize"]),
    ("rlnPixelSize", ("rlnPixelSize",), lambda df: df["rlnPixelSize"]),
    ("rlnDetectorPixelSize and rlnMagnification", ("rlnDetectorPixelSize", "rlnMagnification"),
     lambda df: df["rlnDetectorPixelSize"] * 1e4 / df["rlnMagnification"]),
)
# RELION names stacks relative to its project folder, two levels above a job's STAR file
# (PROJECT/Refine3D/job042/run_data.star).
PROJECT_LEVELS_ABOVE_STAR = 2


def read_star_blocks(path):
    """(every block of a STAR file by name, the name of its particle block): the block named `particles`, or
    the only one with rlnImageName."""
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises several types for malformed files
        raise UserError(f"{path}: not a readable STAR file ({err})") from None
    _refuse_what_the_model_cannot_read(blocks, path)
    particles = [name for name, df in blocks.items() if isinstance(df, pd.DataFrame) and "rlnImageName" in df]
    if not particles:
        raise UserError(f"{path}: no data block with rlnImageName")
    if len(particles) > 1 and "particles" not in particles:
        raise UserError(f"{path}: several data blocks list images ({', '.join('data_' + n for n in particles)}); "
                        "keep one")
    return blocks, "particles" if "particles" in particles else particles[0]


def _read_blocks(path):
    """(the particle block, the optics block or None), each column once and every used column numeric."""
    blocks, name = read_star_blocks(path)
    particles, optics = blocks[name].reset_index(drop=True), blocks.get("optics")
    if isinstance(optics, dict):  # one optics group written as name-value pairs rather than a loop
        optics = pd.DataFrame([optics])
    optics = optics if isinstance(optics, pd.DataFrame) else None
    if len(particles) == 0:
        raise UserError(f"{path}: lists no particles")
    for block, table in ((f"data_{name}", particles), ("data_optics", optics)):
        if table is not None:
            twice = table.columns[table.columns.duplicated()]
            if len(twice):
                raise UserError(f"{path}: {block} has the column {twice[0]} twice")
            _numbers(table, block, path)
    return particles, optics


_NUMERIC_COLUMNS = (_POSE_COLUMNS + _CTF_PARTICLE_COLUMNS + tuple(_CTF_CONSTANT_COLUMNS.values())
                    + tuple(c for _, columns, _ in _PIXEL_SIZE_SOURCES for c in columns)
                    + ("rlnOriginX", "rlnOriginY", "rlnOriginXAngst", "rlnOriginYAngst", "rlnImageSize",
                       "rlnOpticsGroup", "rlnCtfDataAreCtfPremultiplied", "rlnImageDimensionality",
                       "rlnCtfScalefactor", "rlnCtfBfactor"))
_WHOLE_NUMBER_COLUMNS = ("rlnOpticsGroup", "rlnImageSize")


def _numbers(table, block, path):
    """The columns hetrec reads, as numbers in place; a UserError names the first value that is not one."""
    for column in [c for c in _NUMERIC_COLUMNS if c in table]:
        numbers = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        whole = column in _WHOLE_NUMBER_COLUMNS
        bad = np.flatnonzero(np.isnan(numbers) | (whole & (numbers != np.round(numbers))))
        if bad.size:
            raw = table[column].iloc[bad[0]]
            shown = repr(raw) if isinstance(raw, str) else str(raw)  # nan where a row lacks the field
            raise UserError(f"{path}: {block} row {bad[0] + 1}: {column} is {shown}, "
                            f"not {'a whole number' if whole else 'a number'}")
        table[column] = numbers.astype(np.int64) if whole else numbers


def _merge_optics(particles, optics, path):
    """Put optics-group values on each particle row (3.1); a 3.0 file carries them per particle. Where a
    particle row has a field of its own, it wins over its group's (with a warning where they differ)."""
    if optics is None:
        return particles.assign(rlnOpticsGroup=particles.get("rlnOpticsGroup", 1))
    if "rlnOpticsGroup" not in particles:
        raise UserError(f"{path}: has a data_optics block but particles have no rlnOpticsGroup")
    if "rlnOpticsGroup" not in optics:
        raise UserError(f"{path}: data_optics has no rlnOpticsGroup")
    twice = optics["rlnOpticsGroup"][optics["rlnOpticsGroup"].duplicated()]
    if len(twice):
        raise UserError(f"{path}: data_optics lists optics group {twice.iloc[0]} twice")
    missing_groups = set(particles["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
    if missing_groups:
        raise UserError(f"{path}: particles refer to optics groups {sorted(missing_groups)} not in data_optics")
    merged = particles.merge(optics, on="rlnOpticsGroup", how="left", sort=False, suffixes=("", "@optics"))
    for column in [c for c in merged.columns if c.endswith("@optics")]:
        own = column.removesuffix("@optics")
        if pd.api.types.is_numeric_dtype(merged[own]) and not np.allclose(merged[own], merged[column]):
            warn_input(f"{path}: particles' own {own} ({describe_values(merged[own])}) differs from their optics "
                       f"group's ({describe_values(merged[column])}); using the particles'")
    return merged.drop(columns=[c for c in merged.columns if c.endswith("@optics")])


def _refuse_what_the_model_cannot_read(blocks, path):
    """Before anything else: inputs of another kind than single-particle 2-D images as recorded, in one line
    that says so, rather than the first column they lack."""
    tables = [df if isinstance(df, pd.DataFrame) else pd.DataFrame([df]) for df in blocks.values()
              if isinstance(df, (pd.DataFrame, dict))]
    tomography = sorted({c for df in tables for c in df.columns if str(c).startswith("rlnTomo")})
    if tomography:
        raise UserError(f"{path}: a RELION tomography file ({', '.join(tomography[:3])}, …): hetrec reconstructs "
                        "single particles from 2-D images with one pose and CTF each; sub-tomograms and tilt "
                        "series (a pose and CTF per tilt) are not supported")
    for df in tables:
        if "rlnCtfDataAreCtfPremultiplied" in df and (pd.to_numeric(
                df["rlnCtfDataAreCtfPremultiplied"], errors="coerce").fillna(1) != 0).any():
            raise UserError(f"{path}: the images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied = 1), and "
                            "hetrec's likelihood needs them as recorded; extract the particles again without "
                            "premultiplying")


def _refuse_what_the_model_cannot_use(df, path):
    if "rlnImageDimensionality" in df and (df["rlnImageDimensionality"] != 2).any():
        raise UserError(f"{path}: rlnImageDimensionality is not 2; hetrec reads 2-D particle images only")


def _pixel_size(df, path, apix):
    """(pixel size in Å, its source): the first field present in _PIXEL_SIZE_SOURCES' order, one value for
    all particles; a later field that disagrees is a warning. --apix replaces them (option_replaces)."""
    found = [(name, get(df).to_numpy(np.float64)) for name, columns, get in _PIXEL_SIZE_SOURCES
             if all(c in df for c in columns)]
    if apix is not None or not found:
        values, name = (found[0][1], found[0][0]) if found else (None, "rlnImagePixelSize")
        return float(option_replaces(values, apix, "apix", f"pixel size ({name})", path)), "--apix"
    (first, values), others = found[0], found[1:]
    boxes = ("box", df["rlnImageSize"]) if "rlnImageSize" in df else None
    value = single_value(values, first, path, optics_group_hint(df["rlnOpticsGroup"], values, boxes))
    for name, other in others:
        if not np.allclose(other, value, rtol=PIXEL_SIZE_RTOL):
            warn_input(f"{path}: {name} give {describe_values(other)} Å/pixel, but {first} says {value:g}; "
                       f"using {first}")
    return value, f"{first} of {path}"


def _require(df, columns, what, path):
    missing = [c for c in columns if c not in df]
    if missing:
        raise UserError(f"{path}: no {what} columns ({', '.join(missing)} missing)")


def _shifts_px(df, pixel_size_A, path):
    """rlnOriginXAngst/YAngst (3.1+) in Å, else rlnOriginX/Y (3.0) in pixels, else zero; where a file has
    both, the Å ones win, with a warning if they disagree by more than 0.01 pixel."""
    pixels = df[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64) if "rlnOriginX" in df else None
    if "rlnOriginXAngst" not in df:
        return pixels if pixels is not None else np.zeros((len(df), 2))
    from_angst = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64) / pixel_size_A
    if pixels is not None and np.abs(pixels - from_angst).max() > 0.01:
        warn_input(f"{path}: rlnOriginX/Y (pixels) and rlnOriginXAngst/YAngst (Å, at {pixel_size_A:g} Å/pixel) "
                   f"differ by up to {np.abs(pixels - from_angst).max():.3g} pixels; using rlnOriginXAngst/YAngst")
    return from_angst


def _split_image_names(names, path):
    """'000012@Extract/stack.mrcs' -> (11, 'Extract/stack.mrcs')."""
    split = names.astype(str).str.split("@", n=1, expand=True)
    if split.shape[1] != 2 or split[1].isna().any():
        raise UserError(f"{path}: rlnImageName must be of the form index@stack.mrcs")
    try:
        indices = split[0].astype(np.int64).to_numpy() - 1
    except (ValueError, OverflowError):
        raise UserError(f"{path}: rlnImageName has an image index that is not a whole number") from None
    nameless = np.flatnonzero(split[1].str.strip() == "")
    if nameless.size:
        raise UserError(f"{path}: row {names.index[nameless[0]] + 1}: rlnImageName {names.iloc[nameless[0]]!r} "
                        "names no stack")
    return indices, _without_type_suffix(split[1], path)


def _without_type_suffix(stack_names, path):
    """RELION reads `stack.mrc:mrcs` (and `:mrc`) as the MRC stack `stack.mrc` (the suffix names the file's
    type; Scipion and csparc2star write it): the names without it. Any other type suffix is refused."""
    parts = stack_names.str.extract(r"^(?P<name>.*\.[^./:]+):(?P<type>[A-Za-z0-9]+)$")
    typed = parts["type"].notna()
    other = typed & ~parts["type"].str.lower().isin(("mrcs", "mrc"))
    if other.any():
        name = stack_names[other].iloc[0]
        raise UserError(f"{path}: rlnImageName stack {name!r}: a file type hetrec does not read; it reads MRC "
                        "stacks, named NAME.mrcs or NAME.mrc, or with RELION's type suffix NAME.mrc:mrcs")
    return np.where(typed, parts["name"], stack_names).astype(str)


def read_relion_star(path, options):
    """ParticleTable of a RELION particle STAR file (options: particles.InputOptions); stacks are resolved
    but not opened."""
    particles, optics = _read_blocks(path)
    df = _merge_optics(particles, optics, path)
    df = df[select_optics_groups(df["rlnOpticsGroup"], options.optics_groups, "rlnOpticsGroup", path)]
    _refuse_what_the_model_cannot_use(df, path)
    _require(df, _POSE_COLUMNS, "pose", path)
    _require(df, _CTF_PARTICLE_COLUMNS, "CTF", path)
    for pair in (("rlnOriginXAngst", "rlnOriginYAngst"), ("rlnOriginX", "rlnOriginY"),
                 ("rlnDetectorPixelSize", "rlnMagnification")):
        if any(c in df for c in pair):
            _require(df, pair, "paired", path)
    pixel_size_A, pixel_size_source = _pixel_size(df, path, options.apix)
    image_in_stack, stack_names = _split_image_names(df["rlnImageName"], path)
    roots = search_roots(path, options.datadir, PROJECT_LEVELS_ABOVE_STAR)
    stack_paths, stack_of = index_stacks(stack_names, roots)
    box = None
    if "rlnImageSize" in df:
        box = int(single_value(df["rlnImageSize"], "rlnImageSize", path,
                               optics_group_hint(df["rlnOpticsGroup"], df["rlnImageSize"])))
    constants = ctf_constants(len(df), {name: (column, df[column] if column in df else None)
                                        for name, column in _CTF_CONSTANT_COLUMNS.items()}, options, path)
    ctf = np.concatenate([
        np.stack([np.full(len(df), np.nan if box is None else box), np.full(len(df), pixel_size_A)], axis=1),
        df[list(_CTF_PARTICLE_COLUMNS)].to_numpy(np.float64), constants], axis=1)
    table = ParticleTable(
        stack_paths=stack_paths, stack_of=stack_of, image_in_stack=image_in_stack,
        rotations=matrices_from_relion_euler(*(df[c].to_numpy(np.float64) for c in _POSE_COLUMNS)),
        shifts_px=_shifts_px(df, pixel_size_A, path), ctf=ctf,
        optics_group=df["rlnOpticsGroup"].to_numpy(np.int32), source_rows=df.index.to_numpy(np.int64),
        box=box, pixel_size_A=pixel_size_A, pixel_size_source=pixel_size_source, metadata_files=[os.path.abspath(path)],
        half_set=(half_sets_or_none(df["rlnRandomSubset"], "rlnRandomSubset", df.index.to_numpy(), path)
                  if "rlnRandomSubset" in df else None))
    if "rlnCtfScalefactor" in df or "rlnCtfBfactor" in df:
        table.ctf_envelope = np.stack([df.get("rlnCtfScalefactor", pd.Series(1.0, index=df.index)),
                                       df.get("rlnCtfBfactor", pd.Series(0.0, index=df.index))],
                                      axis=1).astype(np.float64)
        check_ctf_envelope(table.ctf_envelope, path, "fix the file", table.source_rows)
    _warn_about_aberrations(df, path)
    check_values(table, path, path)
    return table


# CTF terms RELION's CtfRefine writes that hetrec's CTF does not model: they change phases at high resolution
# (beyond about 3 Å at 300 kV), which the model's default 4 Å does not reach
_ABERRATIONS = {"rlnBeamTiltX": "beam tilt", "rlnBeamTiltY": "beam tilt", "rlnOddZernike": "odd Zernike terms",
                "rlnEvenZernike": "even Zernike terms", "rlnMagMat00": "anisotropic magnification",
                "rlnMagMat01": "anisotropic magnification", "rlnMagMat10": "anisotropic magnification",
                "rlnMagMat11": "anisotropic magnification"}
_NO_ABERRATION = {"rlnMagMat00": 1.0, "rlnMagMat11": 1.0}


def _warn_about_aberrations(df, path):
    """A warning naming each of _ABERRATIONS the file sets away from its neutral value."""
    found = []
    for column, what in _ABERRATIONS.items():
        if column not in df or what in found:
            continue
        values = df[column]
        if column.endswith("Zernike"):  # lists of numbers, as text
            nonzero = values.astype(str).str.contains(r"[1-9]").any()
        else:
            nonzero = (pd.to_numeric(values, errors="coerce") != _NO_ABERRATION.get(column, 0.0)).any()
        if nonzero:
            found.append(what)
    if found:
        warn_input(f"{path}: sets {', '.join(found)}; hetrec's CTF does not model "
                   f"{'them' if len(found) > 1 else 'it'} (defocus, astigmatism, Cs, phase shift, scale and "
                   "B-factor only): they matter beyond about 3 Å, where the model's default (4 Å) does not reach")
