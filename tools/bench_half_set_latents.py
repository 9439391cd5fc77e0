"""Benchmark whether half-set training (`hetrec train --half-sets`) costs the latent space anything: plain and
half-set runs of the same simulated particles over several seeds, scored against the truth.

    python tools/bench_half_set_latents.py --workdir /tmp/bhsl --box 64 --n 4000 --snr 0.1 --epochs 20 \\
        [--seeds 0 1 2 3 4] [--join-A 40 1000]

One dataset (`hetrec simulate --seed 1`, white noise, exact poses), trained once without half-sets and once
with them for each --join-A (half_sets_join_A: the halves' bases are one at resolutions coarser than it; a
value coarser than the box joins only the mean density), at each seed, one run after the other. Prints a
row per seed: each run's latent PC1 |Spearman| and linear R² against the true motion (`hetrec eval`), and for
the half-set runs the agreement of the two halves' maps along the latent's first principal direction
(analysis.half_maps.half_set_agreement) and whether the run warned. Then each half-set setting's largest
shortfall against the plain run of the same seed. Runs already finished in --workdir are read, not rerun.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import yaml


def hetrec(*args):
    subprocess.run([sys.executable, "-m", "hetrec_dist.cli", *args, "-q"], check=True)


def dataset(workdir, box, n, snr):
    data = os.path.join(workdir, f"box{box}_n{n}_snr{snr:g}")
    if not os.path.exists(os.path.join(data, "particles.star")):
        hetrec("simulate", "-o", data, "--n", str(n), "--box", str(box), "--snr", str(snr), "--seed", "1",
               "--overwrite")
    store = data + ".zarr"
    if not os.path.exists(os.path.join(store, "zarr.json")):
        hetrec("convert", os.path.join(data, "particles.star"), "-o", store, "--overwrite")
    return store, os.path.join(data, "ground_truth")


def train(store, truth, run, epochs, seed, join_A):
    """eval.json of the run; join_A None: no half-sets."""
    if not os.path.exists(os.path.join(run, "eval.json")):
        settings = os.path.join(os.path.dirname(run), os.path.basename(run) + ".yaml")
        with open(settings, "w") as f:
            yaml.safe_dump({"epochs": epochs, "seed": seed, "half_sets": join_A is not None,
                            **({} if join_A is None else {"half_sets_join_A": float(join_A)})}, f)
        hetrec("train", store, "-o", run, "--config", settings, "--gt", truth, "--overwrite")
    with open(os.path.join(run, "eval.json")) as f:
        return json.load(f)


def agreement(run):
    """The half-set run's half_set_agreement and whether `hetrec train` warns of it (computed here, from the
    last checkpoint, so that runs trained before a change of the measure read alike)."""
    from hetrec_dist.analysis.half_maps import agreement_line, half_set_agreement
    from hetrec_dist.cli.run_files import run_model

    value = half_set_agreement(run_model(run, None, "cpu"), np.load(os.path.join(run, "z.npy")))
    return value, not agreement_line(value)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/bench_half_set_latents")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--join-A", type=float, nargs="+", default=[40.0])
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    store, truth = dataset(args.workdir, args.box, args.n, args.snr)
    head = " | ".join(f"half-sets, join {j:g} Å: PC1, R², agreement, warned" for j in args.join_A)
    print(f"box {args.box}, {args.n} particles, SNR {args.snr:g}, {args.epochs} epochs\n")
    print(f"| seed | plain: PC1 \\|Spearman\\|, R² | {head} |")
    print("|---|---|" + "---|" * len(args.join_A))
    shortfalls = {j: [] for j in args.join_A}
    for seed in args.seeds:
        base = os.path.join(args.workdir, f"box{args.box}_seed{seed}")
        plain = train(store, truth, base + "_plain", args.epochs, seed, None)
        cells = [f"{plain['latent_pc1_spearman']:.3f}, {plain['latent_linear_r2']:.3f}"]
        for join_A in args.join_A:
            run = f"{base}_join{join_A:g}"
            halves = train(store, truth, run, args.epochs, seed, join_A)
            value, warned = agreement(run)
            cells.append(f"{halves['latent_pc1_spearman']:.3f}, {halves['latent_linear_r2']:.3f}, "
                         f"{value:.2f}, {'yes' if warned else 'no'}")
            shortfalls[join_A].append((plain["latent_pc1_spearman"] - halves["latent_pc1_spearman"],
                                       plain["latent_linear_r2"] - halves["latent_linear_r2"]))
        print(f"| {seed} | " + " | ".join(cells) + " |", flush=True)
    print()
    for join_A, values in shortfalls.items():
        pc1, r2 = np.array(values).max(0)
        print(f"join {join_A:g} Å: the largest shortfall against the plain run of the same seed: PC1 |Spearman| "
              f"{pc1:+.3f}, R² {r2:+.3f}")


if __name__ == "__main__":
    main()
