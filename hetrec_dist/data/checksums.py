"""File checksums: what the store records of its sources, and what later commands compare with them."""

import hashlib


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes, as hex, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()
