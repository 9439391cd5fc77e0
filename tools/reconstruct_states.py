"""How true `hetrec reconstruct` is on an `hetrec simulate --assembly` dataset: each true state's particles,
and each k-means cluster of a run, reconstructed without the model.

    python tools/reconstruct_states.py STORE --gt SIM/ground_truth [--run RUN --k K]

For each true state: its particles, the reconstruction's gold-standard FSC = 0.143 resolution, its FSC = 0.5
resolution against the state's true map, and each subunit's occupancy (analysis.composition). With --run: the
same for each cluster of RUN/analyze.K, with the true states of its particles (the largest shares).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from hetrec_dist.analysis.composition import occupancies  # noqa: E402
from hetrec_dist.analysis.fsc import fsc_summary  # noqa: E402
from hetrec_dist.analysis.ground_truth import read_composition  # noqa: E402
from hetrec_dist.analysis.reconstruct import insert_groups  # noqa: E402
from hetrec_dist.data.half_sets import choose_half_sets  # noqa: E402
from hetrec_dist.data.store import open_store  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--gt", required=True)
    parser.add_argument("--run")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    with open(os.path.join(args.gt, "ground_truth.json")) as f:
        pixel_size_A = json.load(f)["pixel_size_A"]
    truth = read_composition(args.gt)
    core, subunits, states = truth["core"], truth["subunits"], truth["states"]
    records = [record for record, _ in truth["state_maps"]]
    half_sets = choose_half_sets(open_store(args.store), 0)[0]
    groups = {f"state {s} ({record['subunits']})": np.flatnonzero(states == s) for s, record in enumerate(records)}
    results = insert_groups(args.store, list(groups.values()), half_sets, show_progress=False)
    if args.run:  # the clusters apart: insert_groups takes disjoint groups
        labels = np.load(os.path.join(args.run, f"analyze.{args.k}", "kmeans_labels.npy"))
        clusters = {f"cluster {c}": np.flatnonzero(labels == c) for c in range(args.k)}
        results += insert_groups(args.store, list(clusters.values()), half_sets, show_progress=False)
        groups.update(clusters)
    for (name, rows), insertion in zip(groups.items(), results):
        result = insertion.reconstruct()
        occupancy = " ".join(f"{chr(65 + j)} {v:.2f}" for j, v in enumerate(occupancies(result.map, core, subunits,
                                                                                        pixel_size_A)))
        line = f"{name}: {len(rows)} particles, half-maps FSC=0.143 at {result.fsc['resolution_0.143_A']:.1f} Å"
        if name.startswith("state"):
            true_map = truth["state_maps"][int(name.split()[1])][1]
            against = fsc_summary(result.map, true_map, pixel_size_A)["resolution_0.5_A"]
            line += f", FSC=0.5 against its true map at {against:.1f} Å"
        else:
            shares = np.bincount(states[rows] + 1, minlength=len(records) + 1) / len(rows)
            top = np.argsort(shares)[::-1][:2]
            line += ", true: " + ", ".join(f"{'junk' if t == 0 else records[t - 1]['subunits']} "
                                            f"{shares[t]:.0%}" for t in top if shares[t] > 0)
        print(f"{line}; occupancy {occupancy}")


if __name__ == "__main__":
    main()
