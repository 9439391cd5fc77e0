"""Pose refinement on simulated data with consensus-like pose errors (issue 15's benchmark).

The same particles (same images: the errors are drawn after the images) are written twice, with exact poses
and with errors (a rotation about a random axis by |N(0, --pose-error-deg)|, shifts + N(0, --shift-error-px)).
Four runs: exact poses; erroneous poses; erroneous poses with --refine-poses; the same with --shifts-only.
Each is evaluated against the ground truth (`hetrec train --gt`: masked mean FSC, FSC = 0.5 resolution,
latent PC1 |Spearman|), and the refined runs' poses against the true ones. Prints one table row per run and
the share of the FSC = 0.5 loss that refinement recovers:
    python tools/bench_pose_refinement.py --workdir /tmp/bpr --box 64 --n 4000 --snr 0.05 --epochs 12
"""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import zarr
from scipy.spatial.transform import Rotation


def hetrec(*args):
    subprocess.run([sys.executable, "-m", "hetrec_dist.cli", *map(str, args)], check=True)


def pose_errors(rotations, shifts, truth):
    """Angular error (degrees) and shift error (pixels) of each particle against the truth."""
    relative = np.einsum("nij,nkj->nik", np.asarray(rotations, np.float64), truth["rotations"])
    angles = np.degrees(Rotation.from_matrix(relative).magnitude())
    return angles, np.linalg.norm(np.asarray(shifts, np.float64) - truth["shifts"], axis=1)


def exact_and_erroneous(work, args, errors):
    """work/sim_exact and work/sim_errors (`hetrec simulate` of the same particles, args' n, box, SNR and seed;
    the second with the simulate options `errors`) converted to work/exact.zarr and work/errors.zarr; stores
    made before are kept."""
    common = ["--n", args.n, "--box", args.box, "--snr", args.snr, "--seed", args.seed, "-q", "--overwrite"]
    for name, options in (("exact", []), ("errors", errors)):
        if not os.path.isdir(os.path.join(work, f"{name}.zarr")):
            hetrec("simulate", "-o", os.path.join(work, f"sim_{name}"), *common, *options)
            hetrec("convert", os.path.join(work, f"sim_{name}", "particles.star"), "-o",
                   os.path.join(work, f"{name}.zarr"), "-q")


def trained_run(work, name, data, epochs, options):
    """(the run folder, its eval.json scores) of the run `name` on work/{data}.zarr, trained for `epochs` with
    `options` and evaluated against its ground truth; a run done before is kept."""
    run = os.path.join(work, "run_" + name.replace(" ", "_").replace(",", ""))
    if not os.path.isfile(os.path.join(run, "eval.json")):
        hetrec("train", os.path.join(work, f"{data}.zarr"), "-o", run, "--epochs", epochs, "--gt",
               os.path.join(work, f"sim_{data}", "ground_truth"), "-q", "--overwrite", *options)
    with open(os.path.join(run, "eval.json")) as f:
        return run, json.load(f)


def images_per_s(run):
    """The mean of the epochs' images/s in train.log, the first epoch left out (start-up)."""
    with open(os.path.join(run, "train.log")) as f:
        rates = [float(m) for m in re.findall(r"images_per_s ([0-9.e+]+)", f.read())]
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--pose-error-deg", type=float, default=3.0)
    parser.add_argument("--shift-error-px", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-args", default="", help="more `hetrec train` options for every run")
    args = parser.parse_args()
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    exact_and_erroneous(work, args, ["--pose-error-deg", args.pose_error_deg, "--shift-error-px",
                                     args.shift_error_px])
    truth = dict(np.load(os.path.join(work, "sim_exact", "ground_truth", "poses.npz")))
    rows = {}
    for name, data, extra in (("exact poses", "exact", []), ("erroneous poses", "errors", []),
                              ("erroneous, refined", "errors", ["--refine-poses"]),
                              ("erroneous, shifts refined", "errors", ["--refine-poses", "--shifts-only"])):
        run, scores = trained_run(work, name, data, args.epochs, [*extra, *args.train_args.split()])
        group = zarr.open_group(os.path.join(work, f"{data}.zarr"), mode="r")
        rotations, shifts = group["rotations"][:], group["shifts"][:]
        if extra:
            poses = np.load(os.path.join(run, "poses.npz"))
            rotations, shifts = poses["rotations"], poses["shifts"]
        angles, shift_errors = pose_errors(rotations, shifts, truth)
        rows[name] = {"mean_fsc": scores["mean_fsc"], "fsc05_A": scores["mean_resolution_0.5_A"],
                      "pc1": scores["latent_pc1_spearman"], "angle_median_deg": float(np.median(angles)),
                      "shift_median_px": float(np.median(shift_errors)), "images_per_s": images_per_s(run)}
    print(f"box {args.box}, {args.n} particles, SNR {args.snr:g}, {args.epochs} epochs, errors "
          f"|N(0, {args.pose_error_deg:g}°)| and N(0, {args.shift_error_px:g} px)")
    print("| poses | masked mean FSC | FSC = 0.5 (Å) | PC1 abs Spearman | median angle error (°) | "
          "median shift error (px) | images/s |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['mean_fsc']:.3f} | {row['fsc05_A']:.2f} | {row['pc1']:.3f} | "
              f"{row['angle_median_deg']:.2f} | {row['shift_median_px']:.3f} | {row['images_per_s']:.0f} |")
    exact, erroneous = rows["exact poses"]["fsc05_A"], rows["erroneous poses"]["fsc05_A"]
    loss = erroneous - exact
    print(f"FSC = 0.5 loss from the errors: {loss:.2f} Å")
    for name in ("erroneous, refined", "erroneous, shifts refined"):
        recovered = (erroneous - rows[name]["fsc05_A"]) / loss if loss > 0 else float("nan")
        cost = rows["erroneous poses"]["images_per_s"] / rows[name]["images_per_s"]
        print(f"{name}: recovers {recovered:.0%} of it; time per epoch x{cost:.2f}")


if __name__ == "__main__":
    main()
