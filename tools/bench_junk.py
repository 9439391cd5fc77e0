"""How well a run's signal scores (train.inference.signal_scores, what `hetrec analyze` shows for junk) tell a
simulation's junk from its intact particles.

    python tools/bench_junk.py RUN --gt SIM/ground_truth [--store STORE]

Prints the ROC AUC of the score (low: junk) for all junk, and for an --assembly simulation's empty images and
loose subunits apart; the score's 5th, 50th and 95th percentiles of each kind; and, for cuts at 0.2 to 0.5,
the share of intact particles and of junk below the cut.
"""

import argparse
import json
import os
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from hetrec_dist.cli.run_files import run_checkpoint, run_rows, run_store, run_store_path  # noqa: E402
from hetrec_dist.cli.volume import refined_shift_corrections  # noqa: E402
from hetrec_dist.train.inference import load_model, signal_scores  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--gt", required=True)
    parser.add_argument("--store")
    args = parser.parse_args()
    state = run_checkpoint(args.run)
    store = args.store or run_store_path(args.run)
    rows = run_rows(args.run, state, run_store(args.run, state, store))
    scores = signal_scores(load_model(state), store, rows=rows,
                           shift_corrections=refined_shift_corrections(state, store, run_store_path(args.run)))
    with open(os.path.join(args.gt, "ground_truth.json")) as f:
        truth = json.load(f)
    take = (lambda values: values) if rows is None else (lambda values: values[rows])
    junk = take(np.load(os.path.join(args.gt, truth["junk_file"])))
    kinds = {"intact": ~junk, "junk": junk}
    if "junk_parts_file" in truth:
        parts = take(np.load(os.path.join(args.gt, truth["junk_parts_file"])))
        kinds.update({"empty": parts == 0, "loose subunit": parts > 0})
    print(f"{args.run}: {len(scores)} particles, {junk.sum()} junk")
    for kind in ("junk", "empty", "loose subunit"):
        if kind in kinds and kinds[kind].any():
            chosen = kinds["intact"] | kinds[kind]
            print(f"AUC {kind} against intact: {roc_auc_score(junk[chosen], -scores[chosen]):.4f}")
    for kind, chosen in kinds.items():
        if chosen.any():
            print(f"{kind}: score percentiles 5/50/95 {np.percentile(scores[chosen], [5, 50, 95]).round(2).tolist()}")
    for cut in (0.2, 0.3, 0.4, 0.5):
        print(f"below {cut}: {(scores[~junk] < cut).mean():.4f} of intact, {(scores[junk] < cut).mean():.3f} of junk")


if __name__ == "__main__":
    main()
