"""A part of a store's particles, without copying any: index files read, turned into store rows, and the run's
record of the particles it trains on.

An index file names particles by their 0-based row in the input file the store was converted from, as
cryoDRGN's --ind does and as `hetrec select -o indices.pkl` writes them; for a store that holds every row of
its input (any conversion without --optics-group) these are the store's own rows. It may be cryoDRGN's index
.pkl (a pickled integer array, read by the restricted unpickler: data.safe_pickle), a .npy, or text: one index
a line, or all of them on one line separated by spaces or commas ('#' starts a comment). Text with several
numbers on each of several lines is refused: it is a table (pandas writes its own row index as a first
column), whose columns are not all indices.

A run on a subset keeps its store rows (sorted) in RUN/particles.npy and their SHA-256 in every checkpoint;
z.npy and every per-particle output of the run hold these particles, in this order.
"""

import hashlib
import os

import numpy as np

from hetrec_dist.data import safe_pickle
from hetrec_dist.data.atomic_files import save_array
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.data.store import part_of_input, source_rows
from hetrec_dist.errors import UserError


def _as_indices(values, path):
    values = np.asarray(values)
    if values.dtype == object or not (np.issubdtype(values.dtype, np.integer)
                                      or np.issubdtype(values.dtype, np.floating)):
        raise UserError(f"{path}: holds {values.dtype} values, not particle indices")
    values = values.reshape(-1) if values.ndim == 2 and 1 in values.shape else values
    if values.ndim != 1:
        raise UserError(f"{path}: holds an array of shape {values.shape}, not a list of particle indices")
    if np.issubdtype(values.dtype, np.floating):
        whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            raise UserError(f"{path}: {values[~whole][0]:g} (entry {np.flatnonzero(~whole)[0] + 1}) is not a "
                            "particle index (a whole number)")
    huge = np.abs(values.astype(np.float64)) >= 2.0 ** 62  # before the cast, which would wrap them
    if huge.any():
        raise UserError(f"{path}: {values[huge][0]:g} (entry {np.flatnonzero(huge)[0] + 1}) is not a particle "
                        "index")
    return values.astype(np.int64)


def _read_text(path):
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark, as Windows editors write
        lines = [line.split("#")[0].replace(",", " ").split() for line in f]
    lines = [words for words in lines if words]
    wide = [number for number, words in enumerate(lines, 1) if len(words) > 1]
    if len(lines) > 1 and wide:
        raise UserError(f"{path}: line {wide[0]} holds {len(lines[wide[0] - 1])} numbers: give one index a line "
                        "(a table's columns, e.g. the row index pandas writes first, are not particle indices)")
    return np.array([float(word) for words in lines for word in words])


def read_index_file(path):
    """The indices in an index file (module doc), as int64; UserError (one line) for a file that is not one."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    extension = os.path.splitext(path)[1].lower()
    try:
        if extension == ".pkl":
            values = safe_pickle.load(path)
        elif extension == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = _read_text(path)
    except UserError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as err:
        raise UserError(f"{path}: not an index file ({' '.join(str(err).split())[:100]}); give a cryoDRGN .pkl, "
                        "a .npy or a text file of particle indices") from None
    indices = _as_indices(values, path)
    if not len(indices):
        raise UserError(f"{path}: lists no particles")
    return indices


def subset_rows(group, ind=None, exclude=None):
    """The sorted store rows of the particles that index files `ind` (keep these) and `exclude` (leave these
    out) choose, or None for every particle (neither given). UserError for an index file that cannot mean
    particles of this store: a negative index, one past its input, one listed twice, or (a store of part of its
    input) a row the store does not hold; and for a choice that leaves no particle."""
    if ind is None and exclude is None:
        return None
    input_rows = source_rows(group)
    n_input = int(input_rows.max()) + 1
    whole = (n_input == len(input_rows) and (input_rows == np.arange(n_input)).all()
             and part_of_input(group.attrs.asdict()) is None)
    part = "" if whole else (f" (the store holds {len(input_rows)} of its input's rows: indices are rows of "
                             "the input)")
    keep = np.ones(len(input_rows), bool) if ind is None else np.zeros(len(input_rows), bool)
    store_row_of = np.full(n_input, -1, np.int64)
    store_row_of[input_rows] = np.arange(len(input_rows))
    for path, chosen in ((ind, True), (exclude, False)):
        if path is None:
            continue
        indices = read_index_file(path)
        bad = np.flatnonzero((indices < 0) | ((indices >= n_input) & (not part)))
        if bad.size:
            raise UserError(f"{path}: index {indices[bad[0]]} is not a particle of the store's input (0 to "
                            f"{n_input - 1})")
        beyond = indices >= n_input  # rows of a partial store's input after its last stored row
        indices_in = np.where(beyond, 0, indices)
        _, first, counts = np.unique(indices, return_index=True, return_counts=True)
        if (counts > 1).any():
            twice = indices[np.sort(first[counts > 1])[0]]
            raise UserError(f"{path}: lists particle {twice} more than once ({int((counts > 1).sum())} repeated)")
        rows = np.where(beyond, -1, store_row_of[indices_in])
        if (rows < 0).any():
            raise UserError(f"{path}: particle {indices[rows < 0][0]} of the input is not in the store{part}")
        keep[rows] = chosen
    kept = np.flatnonzero(keep)
    if not len(kept):
        raise UserError("--ind and --exclude leave no particle to train on")
    return kept


def rows_sha256(rows):
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def subset_record(rows):
    """What a checkpoint keeps of a run's subset (rows: sorted store rows, or None for every particle)."""
    return None if rows is None else {"n_particles": int(len(rows)), "rows_sha256": rows_sha256(rows)}


def write_run_particles(run_dir, rows):
    """RUN/particles.npy: the store rows a run on a subset trains on."""
    save_array(RunFolder(run_dir).particles, np.asarray(rows, np.int64))


def run_rows(run_dir, checkpoint, n_store=None):
    """The sorted store rows a run's checkpoint trained on (RUN/particles.npy, checked against the
    checkpoint's record and, given n_store, against the store's size), or None for every particle. UserError
    where the file is missing or is not the checkpoint's."""
    record = checkpoint.get("particles")
    if record is None:
        return None
    path = RunFolder(run_dir).particles
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise UserError(f"{path}: missing or unreadable, but the run trained on {record['n_particles']} particles "
                        "it names; it cannot be rebuilt from the checkpoint, which keeps only its SHA-256") from None
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or rows_sha256(rows) != record["rows_sha256"]:
        raise UserError(f"{path} is not the subset this run's checkpoint trained on ({record['n_particles']} "
                        "particles); restore the run's own copy")
    if n_store is not None and len(rows) and (rows.max() >= n_store or rows.min() < 0):
        raise UserError(f"{path} names particles beyond the store's {n_store}: not this run's store")
    return rows.astype(np.int64)


def check_resumed_subset(checkpoint, rows, run_dir):
    """A UserError where --ind/--exclude on a resume choose other particles than the run trained on."""
    saved = checkpoint.get("particles")
    if rows is None:
        return
    if saved is None:
        raise UserError(f"{run_dir} trained on every particle of its store; resume it without --ind/--exclude, "
                        "or train a new run on the subset")
    if saved["rows_sha256"] != rows_sha256(rows):
        raise UserError(f"--ind/--exclude choose {len(rows)} particles, but {run_dir} trained on another "
                        f"{saved['n_particles']}; resume without them (the run keeps its own) or train a new run")
