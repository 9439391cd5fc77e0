"""Benchmark the chunk-aware reader: images/s read and decoded on one core, float32 and float16 stores.

    python tools/bench_reader.py --n 20000 --box 64

Writes synthetic stores directly (noise images: the worst case for compression), then times one epoch of
ChunkShuffledParticles (batch 256, shuffled, in the calling process) with torch and Blosc on one thread,
with and without the check of every chunk against its recorded statistics (store.verify_chunk), epochs
alternating, best of --repeats each. The check's own cost per image is timed apart, on chunks already in
memory (the difference of two epochs is too noisy for it).

Then subsets (train --ind): an epoch of a random 90%, 50% and 10% of the float32 store's particles, whose
chunks are still read whole: images/s delivered, and the cost per delivered image against the whole store's.
"""

import argparse
import os
import shutil
import time

import numpy as np
import torch


def make_store(path, n, box, dtype):
    from hetrec_dist.data.store import chunk_statistics, create_store, default_chunk_images, normalization

    chunk = default_chunk_images(box, dtype)
    group = create_store(path, n, box, dtype, chunk, {"box": box, "pixel_size_A": 1.0})
    rng = np.random.default_rng(0)
    for start in range(0, n, chunk):
        images = rng.normal(size=(min(chunk, n - start), box, box)).astype(dtype)
        group["images"][start:start + len(images)] = images
        group["chunk_stats"][start // chunk] = chunk_statistics(images)
    # poses and CTFs the reader accepts (it checks them): identity rotations, 300 kV
    group["rotations"][:] = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    group["ctf"][:] = np.tile(np.array([box, 1.0, 15000, 15000, 0, 300, 2.7, 0.1, 0], dtype=np.float32), (n, 1))
    group["ctf_envelope"][:] = np.tile(np.array([1.0, 0.0], dtype=np.float32), (n, 1))  # scale 1, B-factor 0
    group.attrs.update({"normalization": normalization(group["chunk_stats"][:]), "complete": True})


def check_seconds_per_image(path, repeats):
    """The best over `repeats` of verifying every chunk of the store (read into memory first), per image."""
    from hetrec_dist.data.reader import ParticleStore
    from hetrec_dist.data.store import verify_chunk

    store = ParticleStore(path)
    chunks = [store.images[slice(*store.chunk_range(c))] for c in range(store.n_chunks)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        assert all(verify_chunk(chunk, store.chunk_stats[c]) for c, chunk in enumerate(chunks))
        best = min(best, time.perf_counter() - started)
    return best / store.n_particles


def time_epoch(path, batch_size, verify=True, rows=None):
    from hetrec_dist.data import reader

    checked = reader.verify_chunk
    if not verify:
        reader.verify_chunk = lambda stored, recorded: True
    try:
        dataset = reader.ChunkShuffledParticles(path, batch_size=batch_size, seed=0, rows=rows)
        started = time.perf_counter()
        count = sum(len(batch["index"]) for batch in dataset)
    finally:
        reader.verify_chunk = checked
    return count / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", default="/tmp/hetrec_bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import numcodecs.blosc
    numcodecs.blosc.set_nthreads(1)
    print(f"{'dtype':>8} {'images/s/core':>14} {'MB/s (float32)':>15} {'unchecked images/s':>19} "
          f"{'check us/image':>15}")
    for dtype in ("float32", "float16"):
        path = os.path.join(args.workdir, f"reader_{dtype}_{args.n}_{args.box}.zarr")
        shutil.rmtree(path, ignore_errors=True)
        make_store(path, args.n, args.box, dtype)
        time_epoch(path, args.batch_size)  # warm the page cache
        rates = {True: [], False: []}
        for _ in range(args.repeats):
            for verify in (True, False):
                rates[verify].append(time_epoch(path, args.batch_size, verify))
        rate, unchecked = max(rates[True]), max(rates[False])
        check_us = 1e6 * check_seconds_per_image(path, args.repeats)
        print(f"{dtype:>8} {rate:>14.0f} {rate * args.box ** 2 * 4 / 1e6:>15.1f} {unchecked:>19.0f} "
              f"{check_us:>15.1f}")
        if dtype == "float32":
            whole, path32 = rate, path
    print(f"\n{'kept':>6} {'images/s/core':>14} {'time per image vs whole':>24}")
    rng = np.random.default_rng(1)
    for fraction in (1.0, 0.9, 0.5, 0.1):
        rows = np.sort(rng.choice(args.n, round(fraction * args.n), replace=False))
        subset_rate = max(time_epoch(path32, args.batch_size, rows=rows) for _ in range(args.repeats))
        print(f"{fraction:>6.0%} {subset_rate:>14.0f} {whole / subset_rate:>24.2f}")


if __name__ == "__main__":
    main()
