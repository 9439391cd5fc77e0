"""Particle subsets back in the input's own format: RELION STAR, cryoSPARC .cs, or cryoDRGN index .pkl."""

import os
import pickle

import numpy as np
import numpy.lib.recfunctions
import starfile

from hetrec_dist.data.checksums import sha256_file
from hetrec_dist.data.cryosparc import HALF_SET_FIELD, read_cs_records
from hetrec_dist.data.relion import read_star_blocks
from hetrec_dist.errors import UserError


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


def write_subset(indices, store_attrs, source_rows, out, half_sets=None):
    """Write the particles at store `indices` to `out` (.star, .cs or .pkl). source_rows (N): each stored
    particle's row in the metadata file (store.source_row). A .star or .cs subset keeps every field of the
    input; a .cs made from a particles .cs and its passthrough .cs holds the fields of both. A .pkl holds
    the store indices (cryoDRGN's --ind). half_sets (N, 1 or 2; a run trained with half-sets): each
    particle's half-set goes into rlnRandomSubset (.star) or alignments3D/split (.cs, 0 or 1), replacing the
    input's, so that a refinement of the subset keeps the run's halves apart."""
    extension = os.path.splitext(out)[1].lower()
    if extension == ".pkl":
        with open(out, "wb") as f:
            pickle.dump(np.asarray(indices, dtype=np.int64), f)
        return
    sources = _source_metadata(store_attrs)
    source_extension = os.path.splitext(sources[0])[1].lower()
    if extension != source_extension:
        raise UserError(f"{out}: the particles came from {sources[0]}; write a {source_extension} subset "
                        "(or a .pkl of indices)")
    rows = np.asarray(source_rows)[indices]
    halves = None if half_sets is None else np.asarray(half_sets)[indices]
    if extension == ".star":
        blocks, name = read_star_blocks(sources[0])
        blocks[name] = blocks[name].iloc[rows].reset_index(drop=True)
        if halves is not None:
            blocks[name]["rlnRandomSubset"] = halves.astype(int)
        starfile.write(blocks, out)
    elif extension == ".cs":
        records, _ = read_cs_records(sources[0], sources[1] if len(sources) > 1 else None)
        records = records[rows]
        if halves is not None:
            split = (halves - 1).astype(np.uint32)
            if HALF_SET_FIELD in records.dtype.names:
                records[HALF_SET_FIELD] = split
            else:
                records = numpy.lib.recfunctions.append_fields(records, HALF_SET_FIELD, split, usemask=False)
        with open(out, "wb") as f:
            np.save(f, records)
    else:
        raise UserError(f"{out}: write .star, .cs or .pkl")
