"""How fast `hetrec reconstruct` inserts images and makes its maps, on a store's first particles.

    python tools/bench_reconstruct.py STORE [--n 4096] [--batch-size 256] [--paths compiled pytorch]

Prints, for each insertion path (the compiled loop; PyTorch's sparse products, the GPU path, on the CPU), the
images inserted a second (the store's reading included) and the seconds reconstruct() takes (Wiener filter,
FFTs, FSC). Run it alone on the machine.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from hetrec_dist.analysis.reconstruct import insert_particles  # noqa: E402
from hetrec_dist.data.reader import ParticleStore  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--paths", nargs="+", default=["compiled", "pytorch"], choices=["compiled", "pytorch"])
    args = parser.parse_args()
    store = ParticleStore(args.store)
    n = min(args.n, store.n_particles)
    rows = np.arange(n)
    half_sets = np.where(np.arange(store.n_particles) % 2 == 0, 1, 2)
    print(f"{args.store}: box {store.box}, {n} particles, {torch.get_num_threads()} threads")
    insert_particles(args.store, half_sets, rows[:args.batch_size], show_progress=False)  # builds, warms up
    for path in args.paths:
        os.environ["HETREC_COMPILED_KERNELS"] = "1" if path == "compiled" else "0"
        start = time.perf_counter()
        insertion = insert_particles(args.store, half_sets, rows, batch_size=args.batch_size, show_progress=False)
        inserted = time.perf_counter()
        result = insertion.reconstruct()
        done = time.perf_counter()
        print(f"{path}: {n / (inserted - start):.0f} images/s inserted; reconstruct() {done - inserted:.1f} s; "
              f"FSC=0.143 at {result.fsc['resolution_0.143_A']:.2f} Å")


if __name__ == "__main__":
    main()
