"""What a store's identity (data.store.compute_content_sha256) costs: the seconds to compute it for N particles,
against an epoch of training at a given speed. A run computes it once at its start, and only for stores made
before conversion recorded it (newer stores carry it in their attrs: a lookup). Commands that pair a run with
its particles (select, export, eval, embed, analyze) pay the same once.

    python tools/bench_identity.py --n 10000 100000 1000000 --images-per-s 1500

The store is synthetic: random poses, shifts, CTFs and optics groups, and images never written (zarr stores no
chunk for them), so it needs little disk (about 90 bytes a particle, compressed less).
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from hetrec_dist.data.store import compute_content_sha256, content_sha256, create_store


def synthetic_store(path, n):
    group = create_store(path, n, 16, "float32", 4096, {"box": 16, "pixel_size_A": 4.0})
    rng = np.random.default_rng(0)
    step = 1 << 18
    for start in range(0, n, step):
        stop = min(n, start + step)
        group["rotations"][start:stop] = rng.normal(size=(stop - start, 3, 3)).astype(np.float32)
        group["shifts"][start:stop] = rng.normal(size=(stop - start, 2)).astype(np.float32)
        group["ctf"][start:stop] = rng.normal(size=(stop - start, 9)).astype(np.float32)
        group["optics_group"][start:stop] = rng.integers(1, 3, stop - start)
    group.attrs.update({"normalization": {"mean": 0.0, "std": 1.0}, "complete": True})
    return group


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--images-per-s", type=float, default=1500.0,
                        help="training speed to compare with (docs/benchmarks.md: box 64 on this CPU)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench_identity_")
    try:
        print(f"{'particles':>10} {'compute s':>10} {'recorded s':>11} {'epoch s':>9} {'share of an epoch':>18}")
        for n in args.n:
            group = synthetic_store(os.path.join(folder, f"s{n}.zarr"), n)
            started = time.perf_counter()
            digest = compute_content_sha256(group)
            computed_s = time.perf_counter() - started
            group.attrs["content_sha256"] = digest
            started = time.perf_counter()
            content_sha256(group)
            recorded_s = time.perf_counter() - started
            epoch_s = n / args.images_per_s
            print(f"{n:>10} {computed_s:>10.3f} {recorded_s:>11.5f} {epoch_s:>9.0f} {computed_s / epoch_s:>17.3%}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
