"""Benchmark the chunk-aware reader: images/s read and decoded on one core, float32 and float16 stores.

    python tools/bench_reader.py --n 20000 --box 64

Writes synthetic stores directly (noise images: the worst case for compression), then times one epoch of
ChunkShuffledParticles (batch 256, shuffled, in the calling process) with torch and Blosc on one thread.
"""

import argparse
import os
import shutil
import time

import numpy as np
import torch


def make_store(path, n, box, dtype):
    from hetrec_dist.data.store import create_store, default_chunk_images, normalization

    chunk = default_chunk_images(box, dtype)
    group = create_store(path, n, box, dtype, chunk, {"box": box, "pixel_size_A": 1.0})
    rng = np.random.default_rng(0)
    for start in range(0, n, chunk):
        images = rng.normal(size=(min(chunk, n - start), box, box)).astype(dtype)
        group["images"][start:start + len(images)] = images
        values = images.astype(np.float64)
        group["chunk_stats"][start // chunk] = [values.size, values.sum(), np.square(values).sum()]
    group.attrs.update({"normalization": normalization(group["chunk_stats"][:]), "complete": True})


def time_epoch(path, batch_size):
    from hetrec_dist.data.reader import ChunkShuffledParticles

    dataset = ChunkShuffledParticles(path, batch_size=batch_size, seed=0)
    started = time.perf_counter()
    count = sum(len(batch["index"]) for batch in dataset)
    return count / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", default="/tmp/hetrec_bench")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import numcodecs.blosc
    numcodecs.blosc.set_nthreads(1)
    print(f"{'dtype':>8} {'images/s/core':>14} {'MB/s (float32)':>15}")
    for dtype in ("float32", "float16"):
        path = os.path.join(args.workdir, f"reader_{dtype}_{args.n}_{args.box}.zarr")
        shutil.rmtree(path, ignore_errors=True)
        make_store(path, args.n, args.box, dtype)
        time_epoch(path, args.batch_size)  # warm the page cache
        rate = time_epoch(path, args.batch_size)
        print(f"{dtype:>8} {rate:>14.0f} {rate * args.box ** 2 * 4 / 1e6:>15.1f}")


if __name__ == "__main__":
    main()
