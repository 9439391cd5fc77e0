"""cryoSPARC particle .cs files (numpy structured arrays) to a ParticleTable.

A refinement job writes its new fields (alignments3D/...) to JNN_..._particles.cs and keeps the fields it
passed through unchanged (blob/..., ctf/...) in JNN_passthrough_particles.cs; the two are joined on `uid`.
Which field gives each quantity, and what happens when two disagree: docs/inputs.md.
"""

import glob
import os

import numpy as np

from hetrec_dist.data.particles import (
    ParticleTable,
    check_values,
    ctf_constants,
    half_sets_or_none,
    index_stacks,
    optics_group_hint,
    option_replaces,
    search_roots,
    select_optics_groups,
    single_value,
)
from hetrec_dist.errors import UserError, warn_input
from hetrec_dist.physics.rotations import matrices_from_cryosparc_pose

REQUIRED_FIELDS = (
    "blob/path", "blob/idx", "blob/shape", "blob/psize_A", "alignments3D/pose", "alignments3D/shift",
    "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad",
)
# cryoSPARC's half-set of each particle in a refinement: 0 or 1 (our half-sets are 1 and 2)
HALF_SET_FIELD = "alignments3D/split"
_CTF_CONSTANT_FIELDS = {"voltage_kv": "ctf/accel_kv", "cs_mm": "ctf/cs_mm", "amplitude_contrast": "ctf/amp_contrast",
                        "phase_shift_deg": "ctf/phase_shift_rad"}
# Stacks (blob/path) are named relative to the project folder, which holds the job folder of the .cs file.
PROJECT_LEVELS_ABOVE_CS = 1


# The shape of one row's value of each field read (scalars ()), all of them numbers but blob/path
_FIELD_SHAPES = {"blob/idx": (), "blob/shape": (2,), "blob/psize_A": (), "alignments3D/pose": (3,),
                 "alignments3D/shift": (2,), "alignments3D/psize_A": (), "ctf/df1_A": (), "ctf/df2_A": (),
                 "ctf/df_angle_rad": (), "ctf/accel_kv": (), "ctf/cs_mm": (), "ctf/amp_contrast": (),
                 "ctf/phase_shift_rad": (), "ctf/exp_group_id": (), "blob/sign": ()}


def _load(path):
    try:
        records = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UserError(f"{path}: not a readable cryoSPARC .cs file (a numpy array of particle records)") from None
    if records.dtype.names is None:
        raise UserError(f"{path}: not a cryoSPARC .cs file (no named fields)")
    for name in [n for n in _FIELD_SHAPES if n in records.dtype.names]:
        field = records.dtype.fields[name][0]
        if field.shape != _FIELD_SHAPES[name] or not np.issubdtype(field.base, np.number):
            raise UserError(f"{path}: {name} is {field.base} of shape {field.shape} per particle; expected "
                            f"numbers of shape {_FIELD_SHAPES[name]}")
    return records


def find_passthrough(path):
    """The passthrough .cs of the job that wrote `path`, from the same folder: JNN_passthrough_particles*.cs
    (JNN the prefix of path's name), or the only *passthrough*.cs there; None if there is none."""
    folder, name = os.path.split(os.path.abspath(path))
    candidates = sorted(p for p in glob.glob(os.path.join(folder, "*passthrough*.cs")) if p != os.path.abspath(path))
    same_job = [p for p in candidates if os.path.basename(p).startswith(name.split("_")[0] + "_")]
    if len(same_job) == 1 or len(candidates) == 1:
        return (same_job or candidates)[0]
    if candidates:
        raise UserError(f"{path}: lacks fields, and several passthrough files lie beside it "
                        f"({', '.join(map(os.path.basename, candidates))}); choose one with --passthrough")
    return None


def _join(main, main_path, passthrough, passthrough_path):
    """main's rows, in main's order, with the fields only `passthrough` has, matched on uid."""
    for records, where in ((main, main_path), (passthrough, passthrough_path)):
        if "uid" not in records.dtype.names:
            raise UserError(f"{where}: no uid field, so its rows cannot be matched with the other .cs file")
        if len(np.unique(records["uid"])) < len(records):
            raise UserError(f"{where}: some uid appears on more than one row, so rows cannot be matched by uid")
    order = np.argsort(passthrough["uid"], kind="stable")
    at = np.clip(np.searchsorted(passthrough["uid"], main["uid"], sorter=order), 0, len(order) - 1)
    rows = order[at]
    unmatched = int((passthrough["uid"][rows] != main["uid"]).sum())
    if unmatched:
        raise UserError(f"{passthrough_path}: lacks {unmatched} of the {len(main)} particles (uid) of {main_path}; "
                        "is it the passthrough file of the same job?")
    extra = [name for name in passthrough.dtype.names if name not in main.dtype.names]
    for name in [n for n in passthrough.dtype.names if n in main.dtype.names and n != "uid"]:
        differ = int(np.sum(np.any(np.asarray(passthrough[name][rows] != main[name]).reshape(len(main), -1), axis=1)))
        if differ:
            warn_input(f"{main_path} and {passthrough_path} give different {name} for {differ} particles; "
                       f"using {main_path}'s (the job's newer values)")
    joined = np.empty(len(main), dtype=main.dtype.descr + [passthrough.dtype.descr[passthrough.dtype.names.index(n)]
                                                            for n in extra])
    for name in main.dtype.names:
        joined[name] = main[name]
    for name in extra:
        joined[name] = passthrough[name][rows]
    return joined


def read_cs_records(path, passthrough=None):
    """(records, the files read): the particles of a .cs file, joined with its passthrough .cs (given, or
    found beside it by find_passthrough when the file lacks REQUIRED_FIELDS). Fields of the main file win
    over the passthrough's (they are the job's newer values). A UserError names what is still missing."""
    records = _load(path)
    missing = [f for f in REQUIRED_FIELDS if f not in records.dtype.names]
    if passthrough is None and missing:
        passthrough = find_passthrough(path)
    files = [path]
    if passthrough is not None:
        records = _join(records, path, _load(passthrough), passthrough)
        files.append(passthrough)
    missing = [f for f in REQUIRED_FIELDS if f not in records.dtype.names]
    if missing:
        joined = f"joined with {passthrough}" if passthrough else "and no passthrough .cs was found beside it"
        raise UserError(f"{path} lacks fields {', '.join(missing)} ({joined}); give the job's passthrough file "
                        "with --passthrough JNN_passthrough_particles.cs, or export the particles with cryoSPARC's "
                        "Export job (one .cs with every field)")
    return records, files


def _stack_names(records):
    """blob/path values are bytes, sometimes with a leading '>' (cryoSPARC's project-relative marker)."""
    return [(p.decode() if isinstance(p, bytes) else str(p)).lstrip(">") for p in records["blob/path"]]


def _ctf_constant(records, field):
    """(the field's name for messages, its values in the store's unit, or None if absent)."""
    if field not in records.dtype.names:
        return field, None
    if field.endswith("_rad"):
        return f"{field} (in degrees)", np.degrees(records[field].astype(np.float64))
    return field, records[field].astype(np.float64)


def _contrast_marking(records, path):
    """'dark' for a blob/sign of +1, else None: cryoSPARC writes -1 on the particles it extracts and on those
    it imports alike, so only +1 marks anything (data.contrast). Rows that differ are refused."""
    if "blob/sign" not in records.dtype.names:
        return None
    signs = np.unique(records["blob/sign"])
    if len(signs) > 1:
        raise UserError(f"{path}: blob/sign differs between particles (images of both contrasts); "
                        "convert each set separately")
    return "dark" if signs[0] > 0 else None


def read_cryosparc_cs(path, options):
    """ParticleTable of a cryoSPARC .cs file (options: particles.InputOptions); poses from alignments3D, CTF
    from ctf/*, optics groups from ctf/exp_group_id."""
    records, files = read_cs_records(path, options.passthrough)
    if len(records) == 0:
        raise UserError(f"{path}: lists no particles")
    names = records.dtype.names
    groups = (records["ctf/exp_group_id"].astype(np.int32) if "ctf/exp_group_id" in names
              else np.ones(len(records), np.int32))
    source_rows = np.flatnonzero(select_optics_groups(groups, options.optics_groups, "ctf/exp_group_id", path))
    records, groups = records[source_rows], groups[source_rows]
    contrast_marking = _contrast_marking(records, path)
    n = len(records)
    box = int(single_value(records["blob/shape"][:, -1], "blob/shape", path,
                           optics_group_hint(groups, records["blob/shape"][:, -1],
                                             ("pixel size", records["blob/psize_A"]))))
    file_pixel_size = single_value(records["blob/psize_A"], "blob/psize_A", path,
                                   optics_group_hint(groups, records["blob/psize_A"]))
    pixel_size_A = float(option_replaces(file_pixel_size, options.apix, "apix", "blob/psize_A", path))
    shifts_px = records["alignments3D/shift"].astype(np.float64)
    if "alignments3D/psize_A" in names:  # shifts are in pixels of the refinement's pixel size
        shifts_px = shifts_px * (records["alignments3D/psize_A"].astype(np.float64)[:, None] / pixel_size_A)
    constants = ctf_constants(n, {name: _ctf_constant(records, field) for name, field in _CTF_CONSTANT_FIELDS.items()},
                              options, path)
    ctf = np.concatenate([
        np.stack([np.full(n, box), np.full(n, pixel_size_A), records["ctf/df1_A"], records["ctf/df2_A"],
                  np.degrees(records["ctf/df_angle_rad"])], axis=1), constants], axis=1).astype(np.float64)
    roots = search_roots(path, options.datadir, PROJECT_LEVELS_ABOVE_CS)
    stack_paths, stack_of = index_stacks(_stack_names(records), roots)
    table = ParticleTable(
        stack_paths=stack_paths, stack_of=stack_of, image_in_stack=records["blob/idx"].astype(np.int64),
        rotations=matrices_from_cryosparc_pose(records["alignments3D/pose"]), shifts_px=shifts_px, ctf=ctf,
        optics_group=groups, source_rows=source_rows, box=box, pixel_size_A=pixel_size_A,
        pixel_size_source="--apix" if options.apix is not None else f"blob/psize_A of {path}",
        metadata_files=[os.path.abspath(f) for f in files],
        half_set=(half_sets_or_none(records[HALF_SET_FIELD].astype(np.int64) + 1, f"{HALF_SET_FIELD} + 1",
                                    source_rows, path) if HALF_SET_FIELD in names else None),
        contrast_marking=contrast_marking)
    _warn_about_unread_ctf_fields(records, names, path)
    check_values(table, path, path)
    return table


# cryoSPARC's CTF fields hetrec does not read, and their neutral values: its per-particle scale and B-factor
# (whose definition hetrec has not pinned against cryoSPARC's) and the higher-order aberrations of its CTF
# refinements, which matter beyond about 3 Å
_UNREAD_CTF_FIELDS = {"ctf/scale": 1.0, "ctf/bfactor": 0.0, "ctf/shift_A": 0.0, "ctf/tilt_A": 0.0,
                      "ctf/trefoil_A": 0.0, "ctf/tetra_A": 0.0, "ctf/anisomag": 0.0}  # all zeros in cryoSPARC's files


def _warn_about_unread_ctf_fields(records, names, path):
    """A warning naming each of _UNREAD_CTF_FIELDS the file sets away from its neutral value."""
    found = []
    for field, neutral in _UNREAD_CTF_FIELDS.items():
        if field not in names:
            continue
        if not np.allclose(records[field].astype(np.float64), neutral):
            found.append(field)
    if found:
        warn_input(f"{path}: sets {', '.join(found)}, which hetrec's CTF does not use (it models defocus, "
                   "astigmatism, Cs, amplitude contrast and phase shift): the maps lose what these correct beyond "
                   "about 3 Å (docs/inputs.md)")
