"""Particle subsets back in the input's own format: RELION STAR, cryoSPARC .cs, or cryoDRGN index .pkl."""

import hashlib
import os
import pickle

import numpy as np
import starfile

from hetrec_dist.errors import UserError


def cluster_members(labels, clusters, k):
    missing = sorted(set(clusters) - set(range(k)))
    if missing:
        raise UserError(f"cluster(s) {', '.join(map(str, missing))} do not exist (clusters are 0 to {k - 1})")
    return np.flatnonzero(np.isin(labels, clusters))


def _source_metadata(store_attrs):
    source = store_attrs["sources"]["metadata"][0]
    path = source["path"]
    if not os.path.isfile(path):
        raise UserError(f"{path}: the file the store was converted from is gone; cannot write a subset of it")
    with open(path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != source["sha256"]:
            raise UserError(f"{path}: changed since the store was made; cannot match its rows to particles")
    return path


def write_subset(indices, store_attrs, out):
    """Write the particles at `indices` (store order = input order) to `out` (.star, .cs or .pkl)."""
    extension = os.path.splitext(out)[1].lower()
    if extension == ".pkl":
        with open(out, "wb") as f:
            pickle.dump(np.asarray(indices, dtype=np.int64), f)
        return
    source = _source_metadata(store_attrs)
    source_extension = os.path.splitext(source)[1].lower()
    if extension != source_extension:
        raise UserError(f"{out}: the particles came from {source}; write a {source_extension} subset "
                        "(or a .pkl of indices)")
    if extension == ".star":
        blocks = starfile.read(source, always_dict=True)
        name = next(n for n, df in blocks.items() if hasattr(df, "columns") and "rlnImageName" in df.columns)
        blocks[name] = blocks[name].iloc[indices].reset_index(drop=True)
        starfile.write(blocks, out)
    elif extension == ".cs":
        with open(out, "wb") as f:
            np.save(f, np.load(source)[indices])
    else:
        raise UserError(f"{out}: write .star, .cs or .pkl")
