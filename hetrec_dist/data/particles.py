"""The particle table: what a source file (STAR, .cs, pkl) says about each particle, before conversion, and
the rules every reader shares for values that come from two places (docs/inputs.md)."""

import dataclasses
import os
import warnings

import mrcfile
import mrcfile.utils
import numpy as np
import pandas as pd

from hetrec_dist.errors import UserError, warn_input

# A stack header's pixel size of 0 or 1 means "not set" in most writers (mrcfile's default is 1).
UNSET_HEADER_PIXEL_SIZES_A = (0.0, 1.0)
PIXEL_SIZE_RTOL = 1e-3
COMPLEX_MRC_MODES = (3, 4)


@dataclasses.dataclass
class InputOptions:
    """What the readers take from the command line besides the input file (docs/inputs.md).

    datadir: where the stacks are, if not where the metadata says. apix: pixel size (Å), replacing the
    file's. voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg: CTF constants, filling a field the file
    lacks or replacing it. optics_groups: convert only these groups (RELION rlnOpticsGroup, cryoSPARC
    ctf/exp_group_id). poses: cryoDRGN's poses.pkl, or its rotations and translations pickles; ctf: its
    ctf.pkl. passthrough: the cryoSPARC passthrough .cs that completes a job's particles .cs.
    """

    datadir: str | None = None
    apix: float | None = None
    voltage_kv: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    phase_shift_deg: float | None = None
    optics_groups: tuple = ()
    poses: tuple = ()
    ctf: str | None = None
    passthrough: str | None = None


@dataclasses.dataclass
class ParticleTable:
    """Per-particle metadata in the store's conventions (see hetrec_dist.physics.rotations).

    stack_paths: the image stacks, resolved; stack_of[i], image_in_stack[i] locate particle i (0-based).
    rotations: N x 3 x 3; shifts_px: N x 2 in pixels at `box`; ctf: N x 9 (physics.ctf.CTF_COLUMNS);
    optics_group: N; source_rows: N, the 0-based row of each particle in the metadata file (particles may be
    a subset, e.g. with --optics-group); pixel_size_source: where pixel_size_A came from, for messages;
    metadata_files: the files the table was read from (recorded with checksums); half_set: N, each
    particle's half-set (1 or 2, as RELION's rlnRandomSubset) where the input assigns one to every particle,
    else None; ctf_envelope: N x 2, RELION's CTF scale and B-factor (Å²) where the input gives them, else None
    (scale 1, B 0: physics.ctf); contrast_marking: 'dark' where the input marks its particles dark (a cryoSPARC
    blob/sign of +1), else None (data.contrast).
    """

    stack_paths: list
    stack_of: np.ndarray
    image_in_stack: np.ndarray
    rotations: np.ndarray
    shifts_px: np.ndarray
    ctf: np.ndarray
    optics_group: np.ndarray
    source_rows: np.ndarray
    box: int | None
    pixel_size_A: float
    pixel_size_source: str
    metadata_files: list
    half_set: np.ndarray | None = None
    ctf_envelope: np.ndarray | None = None
    contrast_marking: str | None = None

    def __len__(self):
        return len(self.stack_of)


def describe_values(values, limit=4):
    """'1.5' or '1, 1.5 and 2' or '1, 1.5, 2, 3, ... (7 values)': the distinct values, for messages."""
    distinct = np.unique(np.asarray(values, dtype=np.float64))
    words = [f"{v:g}" for v in distinct[:limit]]
    if len(distinct) > limit:
        return ", ".join(words) + f", ... ({len(distinct)} values)"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def first_bad(ok, source_rows):
    """'row 12' (1-based row of the file) of the first False in `ok`, and ' (and 3 more)' where there are
    more; None where all are True."""
    bad = np.flatnonzero(~np.asarray(ok))
    if not bad.size:
        return None
    more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
    return int(bad[0]), f"row {int(source_rows[bad[0]]) + 1}{more}"


def half_sets_or_none(values, field, source_rows, path):
    """A metadata field's half-sets (N, int8, 1 or 2), or None, with a warning, where some value is neither
    (the particles are then split at random by `hetrec train --half-sets`)."""
    values = np.asarray(values)
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy()  # text in a STAR column: NaN
    bad = first_bad(np.isin(numbers, (1, 2)), source_rows)
    if bad is not None:
        warn_input(f"{path}: {field} is {values[bad[0]]} at {bad[1]}, not a half-set of 1 or 2; the half-sets are "
                   "left unassigned (`hetrec train --half-sets` splits the particles at random)")
        return None
    return numbers.astype(np.int8)


# What each CTF column must be (after the box and pixel size): (name, test of a physical value, what it must be)
_CTF_VALUE_RULES = (
    ("defocus U (Å)", np.isfinite, "a number"), ("defocus V (Å)", np.isfinite, "a number"),
    ("astigmatism angle (°)", np.isfinite, "a number"), ("voltage (kV)", lambda v: v > 0, "positive"),
    ("Cs (mm)", lambda v: v >= 0, "zero or positive"),
    ("amplitude contrast", lambda v: (v >= 0) & (v < 1), "from 0 to below 1"),
    ("phase shift (°)", np.isfinite, "a number"),
)


def check_values(table, pose_path, ctf_path):
    """Every value the readers made is one a microscope gives: a finite positive pixel size, rotation matrices,
    finite shifts and CTF parameters in their ranges. A UserError names the file, the quantity and the first
    row that is not (NaN and infinity included)."""
    if not (np.isfinite(table.pixel_size_A) and table.pixel_size_A > 0):
        raise UserError(f"{table.pixel_size_source}: the pixel size is {table.pixel_size_A:g} Å; it must be positive")
    bad = first_bad(is_rotation(table.rotations), table.source_rows)
    if bad:
        raise UserError(f"{pose_path}: {bad[1]}: the pose is not a rotation ({_matrix_text(table.rotations[bad[0]])})")
    bad = first_bad(np.isfinite(table.shifts_px).all(axis=1), table.source_rows)
    if bad:
        raise UserError(f"{pose_path}: {bad[1]}: the shift is {table.shifts_px[bad[0]].tolist()}; it must be finite")
    for column, name, ok, must in ctf_checks(table.ctf):
        bad = first_bad(ok, table.source_rows)
        if bad:
            raise UserError(f"{ctf_path}: {bad[1]}: the {name} is {table.ctf[bad[0], column]:g}; it must be {must}")


def is_rotation(matrices):
    """Whether each of N 3 x 3 matrices is a rotation: orthonormal within ROTATION_TOLERANCE, determinant +1
    (N bools; NaN gives False)."""
    with np.errstate(invalid="ignore"):
        gram_error = np.abs(np.einsum("nji,njk->nik", matrices, matrices) - np.eye(3)).max(axis=(1, 2))
        return (gram_error <= ROTATION_TOLERANCE) & (np.linalg.det(matrices) > 0)


# (scale, B-factor in Å²) of a CTF without an envelope
NO_CTF_ENVELOPE = np.array([1.0, 0.0], dtype=np.float32)


def check_ctf_envelope(envelope, path, remedy, source_rows=None):
    """A UserError unless every scale is positive and every B-factor a number (envelope: N x 2); a lost chunk
    of the store's array reads as zeros, a scale of 0."""
    with np.errstate(invalid="ignore"):
        checks = ((0, "CTF scale", np.isfinite(envelope[:, 0]) & (envelope[:, 0] > 0), "positive"),
                  (1, "CTF B-factor", np.isfinite(envelope[:, 1]), "a number"))
    for column, name, good, must in checks:
        bad = np.flatnonzero(~good)
        if bad.size:
            where = f"row {source_rows[bad[0]] + 1}" if source_rows is not None else f"particle {bad[0]}"
            raise UserError(f"{path}: the {name} of {where} ({bad.size} in all) is {envelope[bad[0], column]:g}, "
                            f"not {must}; {remedy}")


def ctf_checks(ctf):
    """(column, name, whether each particle's value is in its range (N bools), what it must be) for each CTF
    column after the box and pixel size (ctf: N x 9, physics.ctf.CTF_COLUMNS)."""
    with np.errstate(invalid="ignore"):
        return [(column, name, np.isfinite(ctf[:, column]) & rule(ctf[:, column]), must)
                for column, (name, rule, must) in enumerate(_CTF_VALUE_RULES, start=2)]


ROTATION_TOLERANCE = 1e-3


def _matrix_text(matrix):
    return "[" + ", ".join("[" + ", ".join(f"{v:.3g}" for v in row) + "]" for row in matrix) + "]"


def single_value(values, name, path, hint=""):
    """The one value a field must hold on every row; a UserError naming the values where rows disagree or are
    not numbers."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"{path}: {name} is {describe_values(values)}; it must be a number")
    if not np.allclose(values, values[0], rtol=PIXEL_SIZE_RTOL, atol=0):
        raise UserError(f"{path}: {name} differs between particles ({describe_values(values)}){hint}")
    return float(values[0])


def option_replaces(values, option_value, option, field, path, default=None):
    """The value of one quantity that both the file (`values` of its `field`, None if it lacks the field) and
    an option (`option_value` of InputOptions field `option`, None if not given) can give.

    The option wins, with a warning where the file says otherwise; without the option the file's values, or
    `default` where the file lacks the field; with neither a UserError that names the option.
    """
    flag = "--" + option.replace("_", "-")
    if option_value is None:
        if values is not None:
            return values
        if default is not None:
            return default
        raise UserError(f"{path}: no {field}; give {flag}")
    if values is not None and not np.allclose(values, option_value, rtol=PIXEL_SIZE_RTOL, atol=1e-6):
        warn_input(f"{flag} {option_value:g} replaces {field} = {describe_values(values)} of {path}")
    return option_value


CTF_CONSTANTS = ("voltage_kv", "cs_mm", "amplitude_contrast", "phase_shift_deg")  # ctf columns 5 to 8


def ctf_constants(n, fields, options, path):
    """Columns 5-8 of the CTF table (voltage kV, Cs mm, amplitude contrast, phase shift °) of n particles.

    fields: for each name in CTF_CONSTANTS, (the file's name for it, its per-particle values or None where
    the file lacks it). Each option of the same name replaces the file's values (option_replaces); a missing
    phase shift is 0 (as in RELION and cryoSPARC), any other missing constant needs its option.
    """
    columns = []
    for name in CTF_CONSTANTS:
        field, values = fields[name]
        values = None if values is None else np.asarray(values, np.float64)
        value = option_replaces(values, getattr(options, name), name, field, path,
                                default=0.0 if name == "phase_shift_deg" else None)
        columns.append(np.broadcast_to(np.asarray(value, np.float64), (n,)))
    return np.stack(columns, axis=1)


def select_optics_groups(groups, wanted, field, path):
    """Row mask of the particles in the `wanted` optics groups (all rows if none are named); a UserError
    naming the groups the file has where a wanted one is absent."""
    groups = np.asarray(groups)
    if not wanted:
        return np.ones(len(groups), dtype=bool)
    absent = sorted(set(wanted) - set(groups.tolist()))
    if absent:
        have = ", ".join(str(g) for g in np.unique(groups))
        raise UserError(f"{path}: no optics group {', '.join(map(str, absent))} ({field} holds {have})")
    return np.isin(groups, list(wanted))


def optics_group_hint(groups, values, also=None):
    """'; group 1: 1.1, group 2: 0.85: convert one group at a time with --optics-group N' where the differing
    values follow optics groups, so the user knows the way out. also: (what, values) of a second field, named
    beside each group's value where it differs too (e.g. ("box", boxes) beside the pixel sizes)."""
    groups, values = np.asarray(groups), np.asarray(values, np.float64)
    per_group = {g: np.unique(values[groups == g]) for g in np.unique(groups)}
    if len(per_group) > 1 and all(len(v) == 1 for v in per_group.values()):
        other = {}
        if also is not None:
            other_values = np.asarray(also[1], np.float64)
            other = {g: np.unique(other_values[groups == g]) for g in per_group}
            if len({tuple(v) for v in other.values()}) == 1:
                other = {}
        listed = ", ".join(f"group {g}: {v[0]:g}" + (f" ({also[0]} {', '.join(f'{x:g}' for x in other[g])})"
                                                      if other else "") for g, v in per_group.items())
        return f"; {listed}: convert one group at a time with --optics-group N"
    return "; convert particles with one value at a time (e.g. with --optics-group N)"


def _trailing_parts(path):
    """'a/b/c.mrcs' -> ['a/b/c.mrcs', 'b/c.mrcs', 'c.mrcs']: the path without 0, 1, 2... leading folders."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    return [os.path.join(*parts[i:]) for i in range(len(parts))]


def resolve_stack_path(path, search_roots):
    """Find a stack named in a metadata file: as named if absolute, else under each of `search_roots` (in
    order: --datadir, the metadata file's folder and the project folders above it) by the whole name, then
    by each shorter trailing part of it (a project moved to another disk keeps its tail:
    /old/proj/Extract/job012/x.mrcs is found as Extract/job012/x.mrcs, job012/x.mrcs or x.mrcs under
    --datadir). A UserError lists every place tried."""
    path = str(path)
    candidates = [path] if os.path.isabs(path) else []
    for part in _trailing_parts(path):
        candidates += [os.path.join(root, part) for root in search_roots]
    candidates = list(dict.fromkeys(candidates))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise UserError(f"image stack {path} not found (looked for {', '.join(candidates)}); "
                    "use --datadir to say where the stacks are")


def search_roots(metadata_path, datadir, levels_up=0):
    """--datadir, then the metadata file's folder and `levels_up` folders above it (RELION and cryoSPARC
    name stacks relative to the project folder, which holds the job folder that holds the metadata)."""
    roots = [os.path.abspath(datadir)] if datadir else []
    folder = os.path.dirname(os.path.abspath(metadata_path))
    for _ in range(levels_up + 1):
        if folder == os.path.dirname(folder):  # the file system's root is nobody's project folder
            break
        roots.append(folder)
        folder = os.path.dirname(folder)
    return list(dict.fromkeys(roots))


def index_stacks(stack_names, roots):
    """Resolve each distinct stack name once: returns (resolved paths, index of each name's stack)."""
    unique_names, stack_of = np.unique(np.asarray(stack_names, dtype=str), return_inverse=True)
    paths = [resolve_stack_path(str(name), roots) for name in unique_names]
    return paths, stack_of.astype(np.int32)


@dataclasses.dataclass
class StackHeader:
    n_images: int
    ny: int
    nx: int
    pixel_size_A: float
    warnings: list  # what mrcfile tolerated in the header, one message each


def images_shape(shape, path):
    """(n, ny, nx) of the images an MRC file's data holds, whatever the header's layout (mrcfile's data shape):
    an image (ny, nx), an image stack or a volume (n, ny, nx: RELION reads either as n images), or a volume
    stack of one section a volume (n, 1, ny, nx: what mrcfile writes for an N x 1 x D x D array). A volume
    stack of thicker volumes holds no images: a UserError naming the shape found."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 4 and shape[1] == 1:
        return (shape[0], *shape[2:])
    if len(shape) != 3:
        raise UserError(f"{path}: holds {shape[0]} volumes of {shape[1]} x {shape[2]} x {shape[3]} voxels (an MRC "
                        "volume stack), not particle images; give a stack of 2-D images")
    return shape


def read_stack_header(path):
    """The header of an MRC stack (a single image reads as a stack of one), checked against the file's
    size: a stack shorter than its header says (an interrupted copy) is a UserError."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header
                pixel_size_A = float(mrc.voxel_size.x)
                shape, mode = mrcfile.utils.data_shape_from_header(header), int(header.mode)
                data_bytes = int(np.prod(shape)) * mrcfile.utils.data_dtype_from_header(header).itemsize
                expected_bytes = header.nbytes + int(header.nsymbt) + data_bytes
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MRC stack ({err})") from None
    n_images, ny, nx = images_shape(shape, path)
    if mode in COMPLEX_MRC_MODES:
        raise UserError(f"{path}: holds complex numbers (MRC mode {mode}); hetrec reads real particle images")
    if min(n_images, ny, nx) <= 0:
        raise UserError(f"{path}: not a readable MRC stack (header says {n_images} images of {nx} x {ny} pixels)")
    actual_bytes = os.path.getsize(path)
    if actual_bytes < expected_bytes:
        raise UserError(f"{path}: truncated: its header says {n_images} images of {nx} x {ny} pixels, "
                        f"{expected_bytes} bytes, but the file has {actual_bytes} bytes (an interrupted copy?)")
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    return StackHeader(n_images, ny, nx, pixel_size_A, messages)


def _warn_per_message(messages_by_path):
    """One warning per distinct message, naming the first stack it came from and how many more."""
    paths_by_message = {}
    for path, messages in messages_by_path:
        for message in messages:
            paths_by_message.setdefault(message, []).append(path)
    for message, paths in paths_by_message.items():
        more = f" (and {len(paths) - 1} more stacks)" if len(paths) > 1 else ""
        warn_input(f"{paths[0]}{more}: {message}")


def check_stacks(table):
    """Every stack exists, is whole, is square at the table's box and holds every index that points into it;
    a header pixel size that disagrees with the metadata's is a warning (the metadata's is the one the poses
    and CTF were refined with). A table that does not know its box (RELION 3.0) takes it from the first stack."""
    headers = [read_stack_header(path) for path in table.stack_paths]
    if table.box is None:
        table.box = headers[0].nx
        table.ctf[:, 0] = table.box
    for stack, (path, header) in enumerate(zip(table.stack_paths, headers)):
        if header.ny != header.nx:
            raise UserError(f"{path}: images are not square ({header.nx} x {header.ny} pixels)")
        if header.nx != table.box:
            raise UserError(f"{path}: images are {header.nx} pixels wide but the metadata says {table.box}")
        indices = table.image_in_stack[table.stack_of == stack]
        if indices.size and (indices.min() < 0 or indices.max() >= header.n_images):
            bad = indices[(indices < 0) | (indices >= header.n_images)][0]
            raise UserError(f"{path}: image index {bad + 1} (1-based) is out of range; the stack holds "
                            f"{header.n_images} images")
    _warn_per_message((path, header.warnings) for path, header in zip(table.stack_paths, headers))
    _warn_per_message(
        (path, [f"its header says {header.pixel_size_A:g} Å/pixel, but {table.pixel_size_source} says "
                f"{table.pixel_size_A:g}; using {table.pixel_size_A:g} (--apix chooses another)"])
        for path, header in zip(table.stack_paths, headers)
        if header.pixel_size_A not in UNSET_HEADER_PIXEL_SIZES_A
        and not np.isclose(header.pixel_size_A, table.pixel_size_A, rtol=PIXEL_SIZE_RTOL, atol=0))


def open_stack(path):
    """A memory map of an MRC stack's images (n x D x D), whatever the header's layout (images_shape): a single
    image file reads as a stack of one, a volume stack of one-section volumes as its sections.
    mrcfile's complaints about the header are not repeated here: check_stacks reported them once."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable MRC stack ({err})") from None
    data = mrc.data
    if data is None:
        raise UserError(f"{path}: not a readable MRC stack (no data)")
    return data.reshape(images_shape(data.shape, path))
