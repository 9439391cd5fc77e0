"""Benchmark half-set training (`hetrec train --half-sets`): its cost, and whether its gold-standard resolution
tells the truth, on simulated particles with known ground truth.

    python tools/bench_half_sets.py --workdir /tmp/bench_half_sets [--n 6000 --box 128 --epochs 12
                                    --snr 0.01 0.003]

For each SNR: one dataset (`hetrec simulate`, white noise, exact poses), trained once without and once with
--half-sets (same settings, seed 0), one after the other in this process, so that the two times compare.
Prints, per ground-truth state (the maps `hetrec eval` scores):
- the half-set run's map (the mean of its half-maps) against the truth: FSC = 0.5 resolution;
- its two half-maps against each other at the same latent: FSC = 0.143 resolution (the gold standard);
- the run without half-sets against the truth: FSC = 0.5 (what halving the data per basis costs).
A half-map FSC of 0.143 corresponds to a full-map FSC against the truth of sqrt(2 x 0.143 / 1.143) = 0.5
(Rosenthal & Henderson 2003), so where the gold standard is right the first two columns agree. Then a line
per SNR with the mean images/s of each run and their ratio.
"""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np


def hetrec(*args):
    subprocess.run([sys.executable, "-m", "hetrec_dist.cli", *args, "-q"], check=True)


def images_per_s(run):
    """The mean of the epochs' images/s in RUN/train.log."""
    with open(os.path.join(run, "train.log")) as f:
        rates = [float(m.group(1)) for m in re.finditer(r"images_per_s ([0-9.]+)", f.read())]
    return float(np.mean(rates))


def train(store, truth, run, epochs, half_sets):
    if not os.path.exists(os.path.join(run, "eval.json")):
        hetrec("train", store, "-o", run, "--epochs", str(epochs), "--gt", truth, "--overwrite",
               "--half-sets" if half_sets else "--no-half-sets")
    with open(os.path.join(run, "eval.json")) as f:
        return json.load(f), images_per_s(run)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/bench_half_sets")
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--snr", type=float, nargs="+", default=[0.01, 0.003])
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print("| SNR | state | particles | FSC=0.5 vs truth (Å) | half-maps FSC=0.143 (Å) | without half-sets, "
          "FSC=0.5 vs truth (Å) |")
    print("|---|---|---|---|---|---|")
    rates = []
    for snr in args.snr:
        data = os.path.join(args.workdir, f"snr{snr}")
        if not os.path.exists(os.path.join(data, "particles.star")):
            hetrec("simulate", "-o", data, "--n", str(args.n), "--box", str(args.box), "--snr", str(snr),
                   "--seed", "1", "--overwrite")
        store = data + ".zarr"
        if not os.path.exists(os.path.join(store, "zarr.json")):
            hetrec("convert", os.path.join(data, "particles.star"), "-o", store, "--overwrite")
        truth = os.path.join(data, "ground_truth")
        plain, plain_rate = train(store, truth, data + "_plain", args.epochs, False)
        halves, halves_rate = train(store, truth, data + "_half_sets", args.epochs, True)
        for state, (h, p) in enumerate(zip(halves["maps"], plain["maps"])):
            bound = " (limit)" if h["half_map_at_limit"] else ""
            print(f"| {snr:g} | {state} | {h['n_particles']} | {h['resolution_0.5_A']:.2f} | "
                  f"{h['half_map_resolution_0.143_A']:.2f}{bound} | {p['resolution_0.5_A']:.2f} |", flush=True)
        truth_A = np.array([m["resolution_0.5_A"] for m in halves["maps"]])
        gold_A = np.array([m["half_map_resolution_0.143_A"] for m in halves["maps"]])
        rates.append((snr, plain_rate, halves_rate, np.mean(gold_A - truth_A), np.mean(np.abs(gold_A - truth_A))))
    print()
    for snr, plain_rate, halves_rate, bias, spread in rates:
        print(f"SNR {snr:g}: half-maps FSC=0.143 minus truth FSC=0.5: mean {bias:+.2f} Å, mean |.| {spread:.2f} Å; "
              f"images/s without half-sets {plain_rate:.0f}, with {halves_rate:.0f}: "
              f"time x{plain_rate / halves_rate:.2f}")


if __name__ == "__main__":
    main()
