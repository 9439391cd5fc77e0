"""Benchmark `hetrec analyze` at scale: wall time and peak RSS for N synthetic latents.

    python tools/bench_analyze.py --run /tmp/hetrec_bench/hq20 --n 1000000 --k 20 [--no-umap] [--path c0 c7]

Uses RUN's checkpoint for the maps (k centres + 2 x 10 traversal maps) and replaces its latents by N
draws from a mixture of 20 Gaussians in the model's latent dimension (written to a scratch copy of RUN), with
five random per-particle values to colour the latents by, as the store's defocus, pose and index.
"""

import argparse
import os
import resource
import shutil
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--no-umap", dest="umap", action="store_false")
    parser.add_argument("--path", nargs=2, metavar=("A", "B"), help="as `hetrec analyze --path`")
    args = parser.parse_args()
    from hetrec_dist.analysis.analyze import analyze_run
    from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint
    from hetrec_dist.train.inference import load_model

    scratch = args.run.rstrip("/") + f"_bench_{args.n}"
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    model = load_model(load_checkpoint(last_checkpoint(args.run)))
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(20, model.shape.zdim))
    z = (centres[rng.integers(0, 20, args.n)] + rng.normal(size=(args.n, model.shape.zdim))).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    particles = {label: rng.normal(size=args.n) for label in  # what particle_metadata reads from a store
                 ("defocus (Å)", "optics group", "tilt (°)", "in-plane angle psi (°)", "particle index")}
    analyze_run(scratch, model, z, args.k, particles=particles, with_umap=args.umap, path_ends=args.path)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"analyze {args.n:,} latents (zdim {model.shape.zdim}, k {args.k}, box {model.shape.box}, "
          f"UMAP {args.umap}, path {args.path}): "
          f"{seconds:.1f} s, peak RSS {peak:.0f} MiB (before: {before:.0f} MiB)")


if __name__ == "__main__":
    main()
