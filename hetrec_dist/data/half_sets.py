"""Half-sets: the two independent halves of the particles that gold-standard validation compares.

A particle's half-set is 1 or 2, as RELION's rlnRandomSubset. A run trained with half-sets takes the store's
own (from the input's rlnRandomSubset or cryoSPARC's alignments3D/split) where it assigns one to every
particle, else a random split in two equal halves, as RELION's refinement and cryoSPARC's make one. Rows that
name the same image (a stack and an index in it: symmetry-expanded particles, or one particle in two merged
files) are one particle: they always share a half-set, since an image in both halves would correlate the
half-maps by its own noise. Its checkpoints hold them (N, int8, store order: the record that counts), and
RUN/half_sets.npy a copy for the user.
"""

import os

import numpy as np

from hetrec_dist.data.atomic_files import save_array
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.data.store import source_rows
from hetrec_dist.errors import UserError


def store_half_sets(group) -> np.ndarray | None:
    """The store's half-sets (N, int8), or None where it has none (made before they were kept, or from an
    input without them) or leaves some particle unassigned (0)."""
    if "half_set" not in group:
        return None
    values = np.asarray(group["half_set"][:], dtype=np.int8)
    return values if np.isin(values, (1, 2)).all() else None


def image_keys(group) -> np.ndarray:
    """Each stored particle's image (N, int64): equal where two rows name the same image of the same stack."""
    stack, index = np.asarray(group["source_stack"][:], np.int64), np.asarray(group["source_index"][:], np.int64)
    return np.unique(np.stack([stack, index], axis=1), axis=0, return_inverse=True)[1].reshape(-1)


def random_half_sets(n_particles: int, seed: int, keys: np.ndarray | None = None) -> np.ndarray:
    """Particles split at random into two halves: the images (keys, N: image_keys; default every particle its
    own) in a random order, those that start within the first ceil(N/2) particles in half 1. Halves are equal
    (the first one larger by one if N is odd) where no image repeats, else within the largest repeat."""
    keys = np.arange(n_particles) if keys is None else np.asarray(keys)
    sizes = np.bincount(keys)
    order = np.random.default_rng(seed).permutation(len(sizes))
    starts = np.cumsum(sizes[order]) - sizes[order]
    first = np.zeros(len(sizes), bool)
    first[order[starts < (n_particles + 1) // 2]] = True
    return np.where(first[keys], 1, 2).astype(np.int8)


def choose_half_sets(group, seed: int, rows=None) -> tuple[np.ndarray, str]:
    """(half-sets for a new run, N: one for every particle of the store; where they came from, in words). rows:
    the store rows a run on a subset trains on (data.subset): a random split then halves them (and, apart, the
    rest), and the store's own must have both halves among them. Raises UserError where the store's put every
    particle in one half, or one image in both."""
    keys = image_keys(group)
    chosen = np.arange(len(keys)) if rows is None else np.asarray(rows)
    values = store_half_sets(group)
    if values is None:
        values = random_half_sets(len(keys), seed, keys)
        if rows is not None:
            values[chosen] = random_half_sets(len(chosen), seed, np.unique(keys[chosen], return_inverse=True)[1])
        return values, f"split at random (seed {seed})"
    keys, values_chosen = keys[chosen], values[chosen]
    counts = np.bincount(values_chosen, minlength=3)[1:]
    if counts.min() == 0:
        raise UserError(f"the store puts all {len(values_chosen)} particles in half-set {int(counts.argmax()) + 1}; "
                        "gold-standard half-sets need particles in both (reconvert from a file without "
                        "rlnRandomSubset or alignments3D/split to split them at random)")
    in_half = np.zeros((keys.max() + 1, 2), bool)
    in_half[keys, values_chosen - 1] = True
    split_images = np.flatnonzero(in_half.all(axis=1))
    if split_images.size:
        copies = source_rows(group)[chosen][keys == split_images[0]] + 1
        more = f" (and {split_images.size - 1} more images)" if split_images.size > 1 else ""
        raise UserError(f"the input puts one image in both half-sets (rows {', '.join(map(str, copies))}{more}): "
                        "the half-maps would share its noise; give its copies one rlnRandomSubset, or reconvert "
                        "from a file without half-sets to split them at random")
    return values, "from the store (the input's rlnRandomSubset or alignments3D/split)"


def read_run_half_sets(run_dir: str, n_particles: int) -> np.ndarray:
    """RUN/half_sets.npy, checked to hold a half-set for each of n_particles; UserError otherwise."""
    path = RunFolder(run_dir).half_sets
    try:
        values = np.load(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: the run's half-sets are not readable ({err})") from None
    if values.shape != (n_particles,) or not np.isin(values, (1, 2)).all():
        raise UserError(f"{path}: not a half-set (1 or 2) for each of the store's {n_particles} particles")
    return values.astype(np.int8)


def reconstruction_half_sets(group, rows, seed=0, given=None, what="the particles"):
    """(half-sets N, where they came from in words) for a gold-standard reconstruction of the store rows `rows`
    (None: all; `what`: those rows in words): `given` (a run's, N) where there are, else choose_half_sets's.
    UserError unless both half-sets hold some of the rows."""
    values, where = (given, "the run's") if given is not None else choose_half_sets(group, seed, rows)
    chosen = values if rows is None else values[rows]
    counts = np.bincount(chosen, minlength=3)[1:]
    if counts.min() == 0:
        raise UserError(f"{what}: {len(chosen)} particle(s), all in half-set {counts.argmax() + 1} ({where}); a "
                        "gold-standard reconstruction needs particles in both: select more")
    return values, where


def checkpoint_half_sets(checkpoint: dict, run: str, n_particles: int) -> np.ndarray:
    """The half-sets a half-set run's checkpoint trained on (N, int8); UserError where it holds none (a
    checkpoint written before they were kept: RUN/half_sets.npy is then the record) or another number."""
    if "half_sets" not in checkpoint:
        return read_run_half_sets(run, n_particles)
    values = np.asarray(checkpoint["half_sets"], dtype=np.int8)
    if values.shape != (n_particles,):
        raise UserError(f"{run}: its checkpoint's half-sets cover {len(values)} particles, the store "
                        f"{n_particles}: not the store the run trained on")
    return values


def check_run_half_sets(run: str, values: np.ndarray) -> None:
    """RUN/half_sets.npy holds `values` (the checkpoint's); a missing copy is written again, another split is
    a UserError: training or selecting with it would mix the halves."""
    path = RunFolder(run).half_sets
    if not os.path.exists(path):
        write_run_half_sets(run, values)
        return
    if not np.array_equal(read_run_half_sets(run, len(values)), values):
        raise UserError(f"{path} is not the split this run trained on (its checkpoint holds that one); "
                        f"delete {os.path.basename(path)} to write it again from the checkpoint")


def write_run_half_sets(run: str, values: np.ndarray) -> None:
    """RUN/half_sets.npy, the user's copy of the split (the checkpoints hold the record)."""
    save_array(RunFolder(run).half_sets, values)
