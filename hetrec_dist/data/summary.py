"""What `hetrec inspect` reports about a particle store."""

import os

import numpy as np
from tqdm import tqdm

from hetrec_dist.data.store import chunk_sizes, open_store, written_chunks


def _stored_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _range(values):
    return [float(np.min(values)), float(np.max(values))] if len(values) else [None, None]


def viewing_directions(rotations):
    """Tilt and rot (degrees) of each particle's viewing direction in the map frame (R^T e_z = R[2])."""
    direction = rotations[:, 2, :]
    tilt = np.degrees(np.arccos(np.clip(direction[:, 2], -1.0, 1.0)))
    rot = np.degrees(np.arctan2(direction[:, 1], direction[:, 0]))
    return tilt, rot


def store_summary(path):
    group = open_store(path, require_complete=False)
    attrs = group.attrs.asdict()
    images = group["images"]
    n = images.shape[0]
    written = written_chunks(group)
    sizes = chunk_sizes(n, images.chunks[0])
    raw_bytes = int(sizes[written].sum()) * images.nbytes // max(n, 1)  # of the chunks written so far
    stored_bytes = _stored_bytes(os.path.join(path, "images"))
    tilt, rot = viewing_directions(group["rotations"][:])
    shifts, ctf = group["shifts"][:], group["ctf"][:]
    groups, counts = np.unique(group["optics_group"][:], return_counts=True)
    return {
        "path": os.path.abspath(path),
        "complete": bool(attrs.get("complete")),
        "chunks_written": f"{int(written.sum())}/{group['chunk_stats'].shape[0]}",
        "n_particles": n,
        "box": attrs["box"],
        "pixel_size_A": attrs["pixel_size_A"],
        "original_box": attrs["original_box"],
        "dtype": str(images.dtype),
        "chunk_images": images.chunks[0],
        "compression": {"raw_MB": raw_bytes / 1e6, "stored_MB": stored_bytes / 1e6,
                        "ratio": raw_bytes / max(stored_bytes, 1)},
        "viewing_tilt_deg": _range(tilt),
        "viewing_rot_deg": _range(rot),
        "shift_x_px": _range(shifts[:, 0]),
        "shift_y_px": _range(shifts[:, 1]),
        "defocus_u_A": _range(ctf[:, 2]),
        "defocus_v_A": _range(ctf[:, 3]),
        "voltage_kv": _range(ctf[:, 5]),
        "cs_mm": _range(ctf[:, 6]),
        "amplitude_contrast": _range(ctf[:, 7]),
        "phase_shift_deg": _range(ctf[:, 8]),
        "optics_groups": {int(g): int(c) for g, c in zip(groups, counts)},
        "normalization": attrs.get("normalization"),
        "sources": [s["path"] for s in attrs["sources"]["metadata"]],
    }


def damaged_chunks(path, show_progress=True):
    """Every images-chunk of a store read back and checked (reader.ParticleStore.verified_chunk), and the
    per-particle fields training reads (ParticleStore.check_fields, which raises its UserError): (number of
    chunks checked, [(chunk, first particle, last particle + 1, what is wrong)]). An unfinished store's
    chunks not yet written are left out; a complete store's are all checked."""
    from hetrec_dist.data.reader import DamagedChunk, ParticleStore  # torch, which a plain inspect does not need

    store = ParticleStore(path, require_complete=False)
    _ = store.fields  # read, and checked
    complete = bool(store.attrs.get("complete"))
    chunks = np.arange(store.n_chunks) if complete else np.flatnonzero(written_chunks(store.group))
    damaged = []
    for chunk in tqdm(chunks, unit="chunk", desc="verify", disable=not show_progress, dynamic_ncols=True):
        try:
            store.verified_chunk(chunk)
        except DamagedChunk as err:
            damaged.append((int(chunk), *store.chunk_range(chunk), err.reason))
    return len(chunks), damaged
