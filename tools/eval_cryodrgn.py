"""Evaluate a cryoDRGN train_vae run against hetrec simulate's ground truth, as `hetrec eval` does ours.

    python tools/eval_cryodrgn.py --cryodrgn-venv /tmp/cdrgn --out /tmp/hetrec_bench/cdq --epoch 19 \
        --gt /tmp/hetrec_bench/sim_4096_64/ground_truth --apix 2.0

For each ground-truth map: the mean cryoDRGN latent of particles within 0.05 of its coordinate, decoded
with `cryodrgn eval_vol`, FSC against the true map. Prints the same numbers as `hetrec eval`, for the map
as decoded and (to show conventions) with --flip and --invert.
"""

import argparse
import os
import pickle
import subprocess
import sys

import mrcfile
import numpy as np

from hetrec_dist.analysis.fsc import fsc_summary
from hetrec_dist.analysis.ground_truth import latent_linear_r2, latent_order_correlation, read_ground_truth


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cryodrgn-venv", required=True)
    parser.add_argument("--out", required=True, help="cryoDRGN train_vae output folder")
    parser.add_argument("--epoch", type=int, required=True, help="0-based epoch of weights.N.pkl / z.N.pkl")
    parser.add_argument("--gt", required=True)
    parser.add_argument("--apix", type=float, required=True)
    args = parser.parse_args()
    coordinates, maps = read_ground_truth(args.gt)
    with open(os.path.join(args.out, f"z.{args.epoch}.pkl"), "rb") as f:
        z = pickle.load(f)
    latents = np.stack([z[np.abs(coordinates - c) <= 0.05].mean(axis=0) for c, _ in maps])
    zfile = os.path.join(args.out, "gt_latents.txt")
    np.savetxt(zfile, latents)
    for variant, flags in (("as decoded", []), ("--flip", ["--flip"]), ("--invert", ["--invert"])):
        out_dir = os.path.join(args.out, "gt_maps_" + (flags[0].strip("-") if flags else "plain"))
        subprocess.run([os.path.join(args.cryodrgn_venv, "bin", "cryodrgn"), "eval_vol",
                        os.path.join(args.out, f"weights.{args.epoch}.pkl"),
                        "-c", os.path.join(args.out, "config.yaml"),
                        "--zfile", zfile, "-o", out_dir, "--Apix", str(args.apix), *flags],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        names = sorted(n for n in os.listdir(out_dir) if n.endswith(".mrc"))
        results = [fsc_summary(mrcfile.read(os.path.join(out_dir, n)).astype(np.float64), truth, args.apix)
                   for n, (_, truth) in zip(names, maps)]
        resolutions = ", ".join(f"{r['resolution_0.5_A']:.1f}" for r in results)
        print(f"cryoDRGN {variant}: FSC=0.5 at [{resolutions}] A, mean FSC "
              f"{np.mean([r['mean_fsc'] for r in results]):.3f}")
    print(f"cryoDRGN latent PC1 |Spearman| {latent_order_correlation(z, coordinates):.3f}, "
          f"held-out linear R^2 {latent_linear_r2(z, coordinates):.3f}")


if __name__ == "__main__":
    sys.exit(main())
