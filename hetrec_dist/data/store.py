"""The Zarr particle store: layout, creation and validated opening. docs/store_format.md documents it.

Arrays (N particles, box D):
    images          N x D x D   float32 | float16  chunked along N, Blosc/lz4
    rotations       N x 3 x 3   float32   pose matrices, hetrec_dist.physics.rotations convention
    shifts          N x 2       float32   pixels at this box (cryoDRGN translations x D)
    ctf             N x 9       float32   hetrec_dist.physics.ctf.CTF_COLUMNS
    ctf_envelope    N x 2       float32   RELION's CTF scale and B-factor (A^2): the CTF times scale x exp(-B s^2/4)
                                          (physics.ctf). Stores made before it existed lack it: (1, 0).
    optics_group    N           int32
    source_stack    N           int32     index into attrs["sources"]["stacks"]
    source_index    N           int64     0-based image index in that stack
    source_row      N           int64     0-based row of the particle in the metadata file (STAR, .cs)
    half_set        N           int8      1 or 2 (RELION rlnRandomSubset, cryoSPARC alignments3D/split + 1);
                                          0: unassigned. Stores made before it existed lack it.
    chunk_stats     C x 3       float64   per images-chunk (count, sum, sum of squares); NaN = not written
"""

import hashlib
import os

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from hetrec_dist.errors import UserError

FORMAT_NAME = "hetrec-particles"
FORMAT_VERSION = 1
TARGET_CHUNK_BYTES = 4 * 2 ** 20
IMAGE_DTYPES = ("float32", "float16")
PER_PARTICLE_ARRAYS = {  # name: (trailing shape, dtype)
    "rotations": ((3, 3), "float32"),
    "shifts": ((2,), "float32"),
    "ctf": ((9,), "float32"),
    "ctf_envelope": ((2,), "float32"),
    "optics_group": ((), "int32"),
    "source_stack": ((), "int32"),
    "source_index": ((), "int64"),
    "source_row": ((), "int64"),
    "half_set": ((), "int8"),
}


def default_chunk_images(box, dtype):
    """Images per chunk so that a chunk holds about TARGET_CHUNK_BYTES uncompressed."""
    return max(1, TARGET_CHUNK_BYTES // (box * box * np.dtype(dtype).itemsize))


def n_chunks(n_images, chunk_images):
    return -(-n_images // chunk_images)


def chunk_sizes(n_images, chunk_images):
    """Images in each images-chunk (the last one may hold fewer)."""
    return np.diff(np.minimum(np.arange(n_chunks(n_images, chunk_images) + 1) * chunk_images, n_images))


def source_rows(group):
    """Each stored particle's 0-based row in its input file (N, int64); stores made before `source_row` existed
    hold every row of their input, in order."""
    if "source_row" in group:
        return np.asarray(group["source_row"][:], np.int64)
    return np.arange(group["images"].shape[0], dtype=np.int64)


def part_of_input(store_attrs):
    """The conversion options that left out rows of the input ('--optics-group 2'), or None where the store
    holds every row of it, in order."""
    groups = store_attrs.get("input_options", {}).get("optics_groups")
    return f"--optics-group {','.join(map(str, groups))}" if groups else None


def is_store(path):
    return os.path.isfile(os.path.join(path, "zarr.json"))


def create_store(path, n_images, box, dtype, chunk_images, attrs):
    """An empty, incomplete store with every array allocated; attrs["complete"] is False. `path` holds
    nothing but, perhaps, the writer's lock file (data.folder_lock)."""
    group = zarr.open_group(path, mode="a")
    # lz4, not zstd: noise-dominated images compress little either way (1.06 against 1.15), and a store in lz4
    # reads about 1.5x as fast, which training pays every epoch (docs/benchmarks.md, "Second round")
    compressor = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    group.create_array("images", shape=(n_images, box, box), chunks=(chunk_images, box, box), dtype=dtype,
                       compressors=compressor, fill_value=0)
    meta_chunk = min(max(chunk_images, 65536), max(n_images, 1))
    for name, (trailing, meta_dtype) in PER_PARTICLE_ARRAYS.items():
        group.create_array(name, shape=(n_images, *trailing), chunks=(meta_chunk, *trailing), dtype=meta_dtype,
                           compressors=compressor, fill_value=0)
    # One storage object per images-chunk, so that concurrent writers never share one.
    group.create_array("chunk_stats", shape=(n_chunks(n_images, chunk_images), 3), chunks=(1, 3),
                       dtype="float64", fill_value=np.nan, compressors=None)
    group.attrs.update({**attrs, "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "complete": False})
    return group


def open_store(path, mode="r", require_complete=True):
    """Open a particle store, refusing what is not one, a format version we do not know, or an
    unfinished conversion (unless require_complete is False)."""
    if not is_store(path):
        raise UserError(f"{path}: not a particle store (no zarr.json); make one with `hetrec convert`")
    try:
        group = zarr.open_group(path, mode=mode)
    except Exception as err:  # zarr raises several types for damaged metadata
        raise UserError(f"{path}: unreadable particle store ({err})") from None
    attrs = group.attrs.asdict()
    if attrs.get("format") != FORMAT_NAME:
        raise UserError(f"{path}: not a hetrec particle store (format {attrs.get('format')!r})")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: store format version {attrs.get('format_version')} is not supported "
                        f"(this hetrec reads version {FORMAT_VERSION})")
    if require_complete and not attrs.get("complete"):
        raise UserError(f"{path}: the conversion that made this store did not finish; "
                        "rerun the same `hetrec convert` command to complete it")
    return group


def written_chunks(group):
    """Boolean per images-chunk: has its conversion finished (its stats row is written and valid)?"""
    stats = group["chunk_stats"]
    done = np.zeros(stats.shape[0], dtype=bool)
    try:
        done = np.isfinite(stats[:]).all(axis=1)
    except Exception:  # a damaged row (e.g. a kill during its write): read rows one by one
        for chunk in range(stats.shape[0]):
            try:
                done[chunk] = np.isfinite(stats[chunk]).all()
            except Exception:
                done[chunk] = False
    return done


def chunk_statistics(stored):
    """(count, sum, sum of squares) of one images-chunk's stored values, in float64: what chunk_stats records
    when the chunk is written, and what every later read of it is checked against (verify_chunk)."""
    values = np.asarray(stored).ravel()
    if values.dtype == np.float16:
        values = values.astype(np.float32)  # exact; numpy's float16 arithmetic is slow
    # float64 sums without a float64 copy of the chunk (the check runs on every chunk read)
    return np.array([values.size, values.sum(dtype=np.float64), np.einsum("i,i->", values, values, dtype=np.float64)])


# Sums of the same values on another machine may differ in their last bits (the order of a SIMD reduction);
# a damaged chunk differs by far more.
CHUNK_CHECK_RTOL = 1e-9


def verify_chunk(stored, recorded):
    """Whether a chunk read back holds what was written: its chunk_statistics equal the recorded row, to
    within rounding (CHUNK_CHECK_RTOL of the sum's scale sqrt(count x sum of squares), and of the sum of
    squares)."""
    count, total, total_sq = chunk_statistics(stored)
    expected_count, expected_total, expected_sq = recorded
    scale = np.sqrt(max(count * expected_sq, 0.0))
    return (count == expected_count and abs(total - expected_total) <= CHUNK_CHECK_RTOL * scale
            and abs(total_sq - expected_sq) <= CHUNK_CHECK_RTOL * expected_sq)


def normalization(chunk_stats):
    """Mean and standard deviation of all pixels, from per-chunk (count, sum, sum of squares)."""
    count, total, total_sq = chunk_stats.sum(axis=0)
    mean = total / count
    return {"mean": float(mean), "std": float(np.sqrt(max(total_sq / count - mean ** 2, 0.0)))}


# The arrays whose values, particle by particle and in store order, make a store's identity
IDENTITY_ARRAYS = ("rotations", "shifts", "ctf", "optics_group", "ctf_envelope")  # those the store has
IDENTITY_ATTR = "content_sha256"


def compute_content_sha256(group) -> str:
    """The identity of a store's particles: SHA-256 of every particle's pose, shift, CTF and optics group in
    store order (IDENTITY_ARRAYS, as stored), the images' box and dtype, and their mean and standard deviation
    over the whole store (normalization, to 6 significant digits: their sums are summed in chunk order).
    The same particles in the same order give the same identity wherever the store lies and however it is
    chunked; the same particles in another order, a subset, or other images do not."""
    digest = hashlib.sha256()
    images = group["images"]
    norm = group.attrs.get("normalization") or normalization(group["chunk_stats"][:])
    digest.update(f"{images.shape} {images.dtype} {norm['mean']:.6g} {norm['std']:.6g}".encode())
    for name in (name for name in IDENTITY_ARRAYS if name in group):
        array = group[name]
        for start in range(0, array.shape[0], 1 << 20):  # a million particles a read: bounded memory
            digest.update(np.ascontiguousarray(array[start:start + (1 << 20)]).tobytes())
    return digest.hexdigest()


def content_sha256(group) -> str:
    """A complete store's identity (compute_content_sha256): recorded in its attrs when its conversion
    finished, computed here for stores made before that."""
    return group.attrs.get(IDENTITY_ATTR) or compute_content_sha256(group)


def check_same_particles(checkpoint: dict, sha256: str, store_path: str, run: str, option: str = "") -> None:
    """Raises UserError where the store at `store_path` (identity `sha256`, content_sha256) holds other
    particles than the run's checkpoint was trained on (its "store_sha256"; checkpoints made before runs
    recorded it are not checked). option: how the command takes a store (e.g. "--store"), for the advice."""
    recorded = checkpoint.get("store_sha256")
    if recorded is not None and recorded != sha256:
        raise UserError(f"{store_path} holds other particles than the run {run} was trained on (store identity "
                        f"{sha256[:12]}…, the run's {recorded[:12]}…: another dataset, order or subset, or the "
                        f"store was converted again); give the run's own store{' with ' + option if option else ''}, "
                        "wherever it lies now")
