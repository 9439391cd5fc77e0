"""Per-particle defocus refinement on simulated data with defocus errors (issue 29, part 2's benchmark).

The same particles (same images: the errors are drawn after the images) are written twice, with exact defoci
and with N(0, --defocus-error-A) added to each particle's defocus. Three runs, all with --half-sets (which
--refine-ctf needs): exact defoci; erroneous defoci; erroneous defoci with --refine-ctf. Each is evaluated
against the ground truth (`hetrec train --gt`: masked mean FSC, FSC = 0.5 resolution, latent PC1
|Spearman|), and each run's defoci against the true ones.
Prints one table row per run and the share of the FSC = 0.5 loss that refinement recovers:
    python tools/bench_ctf_refinement.py --workdir /tmp/bcr --box 64 --n 4000 --snr 0.05 --epochs 12
"""

import argparse
import os

import numpy as np
import zarr
from bench_pose_refinement import exact_and_erroneous, images_per_s, trained_run  # tools/ is the script's folder


def mean_defocus_errors(ctf, truth):
    """Each particle's mean defocus (store ctf columns, N x 9) minus the true one (Å)."""
    return 0.5 * (ctf[:, 2] + ctf[:, 3]) - 0.5 * (truth["defocus_u_A"] + truth["defocus_v_A"])


def astigmatism_errors(ctf, truth):
    """The length (Å) of each particle's astigmatism vector (the half-difference of U and V along cos 2a and
    sin 2a) minus the true one."""
    def vectors(u, v, angle_deg):
        half, angle = 0.5 * (np.asarray(u, np.float64) - v), np.radians(angle_deg)
        return np.stack([half * np.cos(2 * angle), half * np.sin(2 * angle)], 1)

    return np.linalg.norm(vectors(ctf[:, 2], ctf[:, 3], ctf[:, 4])
                          - vectors(truth["defocus_u_A"], truth["defocus_v_A"], truth["defocus_angle_deg"]), axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--defocus-error-A", type=float, default=400.0)
    parser.add_argument("--astigmatism-error-A", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-args", default="", help="more `hetrec train` options for every run")
    parser.add_argument("--refine-args", default="", help="more `hetrec train` options for the refined run")
    args = parser.parse_args()
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    exact_and_erroneous(work, args, ["--defocus-error-A", args.defocus_error_A, "--astigmatism-error-A",
                                     args.astigmatism_error_A])
    truth = dict(np.load(os.path.join(work, "sim_exact", "ground_truth", "ctf.npz")))
    rows = {}
    refine = ["--refine-ctf", *args.refine_args.split()]
    for name, data, extra in (("exact defoci", "exact", []), ("erroneous defoci", "errors", []),
                              ("erroneous, refined", "errors", refine)):
        run, scores = trained_run(work, name, data, args.epochs, ["--half-sets", *extra, *args.train_args.split()])
        store = os.path.join(work, f"{data}.zarr")
        ctf = np.load(os.path.join(run, "ctf.npz"))["ctf"] if extra else zarr.open_group(store, mode="r")["ctf"][:]
        errors = mean_defocus_errors(ctf, truth)
        rows[name] = {"mean_fsc": scores["mean_fsc"], "fsc05_A": scores["mean_resolution_0.5_A"],
                      "pc1": scores["latent_pc1_spearman"], "median_error_A": float(np.median(np.abs(errors))),
                      "rms_error_A": float(np.sqrt(np.mean(errors ** 2))), "images_per_s": images_per_s(run),
                      "astigmatism_A": float(np.median(astigmatism_errors(ctf, truth)))}
    print(f"box {args.box}, {args.n} particles, SNR {args.snr:g}, {args.epochs} epochs, defocus errors "
          f"N(0, {args.defocus_error_A:g} Å), astigmatism N(0, {args.astigmatism_error_A:g} Å) a component; "
          f"half-sets; refined with {' '.join(refine)} {args.train_args}")
    print("| defoci | masked mean FSC | FSC = 0.5 (Å) | PC1 abs Spearman | median defocus error (Å) | "
          "RMS defocus error (Å) | median astigmatism error (Å) | images/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['mean_fsc']:.3f} | {row['fsc05_A']:.2f} | {row['pc1']:.3f} | "
              f"{row['median_error_A']:.0f} | {row['rms_error_A']:.0f} | {row['astigmatism_A']:.0f} | "
              f"{row['images_per_s']:.0f} |")
    exact, erroneous = rows["exact defoci"], rows["erroneous defoci"]
    refined = rows["erroneous, refined"]
    for key, unit, better in (("fsc05_A", "Å", -1), ("mean_fsc", "", 1)):
        loss = better * (exact[key] - erroneous[key])
        recovered = better * (refined[key] - erroneous[key]) / loss if loss > 0 else float("nan")
        print(f"{key} loss from the errors: {loss:.3f}{unit}; refinement recovers {recovered:.0%} of it")
    print(f"time per epoch x{erroneous['images_per_s'] / refined['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
