"""Peak memory of training at large boxes, and what holds it: the basis with its optimizer state, or the batch.

    python tools/bench_memory.py [--box 256 320] [--apix 1.0] [--resolution 4 3] [--n 768] [--half-sets]

For each box: simulate --n particles at --apix Å/px (the particles' content does not matter here), convert,
then for each --resolution (max_resolution_A, Å) train one epoch of the default model (K = 16, batch 256, CPU)
and report the process tree's peak RSS beside the sizes that scale: the basis (rows x 2(K+1) float32) with
its Adam moments and gradient (4 copies in all), and one batch's images (256 x D x D float32). Where the
basis' four copies are most of the peak, the optimizer state dominates.
"""

import argparse
import os
import subprocess
import sys

import yaml
from bench_convert import run_measured

MIB = 2 ** 20


def prepare(workdir, n, box, apix):
    hetrec = [sys.executable, "-m", "hetrec_dist.cli"]
    sim, store = os.path.join(workdir, f"mem_sim_{box}"), os.path.join(workdir, f"mem_{box}.zarr")
    if not os.path.exists(os.path.join(sim, "particles.star")):
        subprocess.run([*hetrec, "simulate", "-o", sim, "--n", str(n), "--box", str(box), "--apix", str(apix),
                        "-q", "--overwrite"], check=True)
    if not os.path.exists(store):
        subprocess.run([*hetrec, "convert", os.path.join(sim, "particles.star"), "-o", store, "-q"], check=True)
    return store


def basis_rows(box, apix, resolution_A, half_sets):
    from hetrec_dist.model.hetvae import HetVAE
    from hetrec_dist.train.config import TrainConfig

    config = TrainConfig(max_resolution_A=resolution_A, half_sets=half_sets)
    return HetVAE(config.model_shape(box, apix), apix).basis.shape


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box", type=int, nargs="+", default=[256, 320])
    parser.add_argument("--apix", type=float, default=1.0)
    parser.add_argument("--resolution", type=float, nargs="+", default=[4.0, 3.0])
    parser.add_argument("--n", type=int, default=768)
    parser.add_argument("--half-sets", action="store_true")
    parser.add_argument("--workdir", default="/tmp/hetrec_bench")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print("| box | Å/px | resolution | basis rows | basis + moments + gradient | one batch's images | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for box in args.box:
        store = prepare(args.workdir, args.n, box, args.apix)
        for resolution_A in args.resolution:
            config = os.path.join(args.workdir, "mem_config.yaml")
            with open(config, "w") as f:
                yaml.safe_dump({"max_resolution_A": resolution_A}, f)
            command = [sys.executable, "-m", "hetrec_dist.cli", "train", store, "-o",
                       os.path.join(args.workdir, "mem_run"), "--overwrite", "-q", "--epochs", "1",
                       "--batch-size", "256", "--device", "cpu", "--config", config,
                       "--half-sets" if args.half_sets else "--no-half-sets"]
            _, peak = run_measured(command)
            rows, columns = basis_rows(box, args.apix, resolution_A, args.half_sets)
            basis_mib = 4 * rows * columns * 4 / MIB
            print(f"| {box} | {args.apix:g} | {resolution_A:g} Å | {rows:,} | {basis_mib:,.0f} MiB | "
                  f"{256 * box * box * 4 / MIB:,.0f} MiB | {peak / MIB:,.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
