"""CTF refinement against a trained half-set model held fixed: what the images and the model alone say about
the defoci, and what the half-maps' FSC weighting does.

Takes a run trained with --half-sets (e.g. on erroneous defoci), a store (the same particles) and the
simulation's ground truth; refines the first --n particles' mean defocus for --iterations steps against the
run's model, as `hetrec train --refine-ctf` does each time a particle is in a batch, and prints the median
and RMS error against the truth after each step. --half own: each particle against its own half's map (as
training does), other: against the other half's, which never saw it; --weights fsc: the likelihood weighed
per shell by the half-maps' FSC (as training does), none: unweighed. No training happens:
    python tools/ctf_refinement_fixed_model.py RUN STORE GROUND_TRUTH [--half own] [--weights fsc]
"""

import argparse

import numpy as np
import torch

from hetrec_dist.data.reader import ParticleStore, _to_torch
from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint
from hetrec_dist.train.config import TrainConfig
from hetrec_dist.train.ctf_refinement import CtfCorrections, fsc_weights, given_ctf_sha256
from hetrec_dist.train.inference import load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("store")
    parser.add_argument("ground_truth")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--half", choices=["own", "other"], default="own")
    parser.add_argument("--weights", choices=["fsc", "none"], default="fsc")
    args = parser.parse_args()
    model = load_model(load_checkpoint(last_checkpoint(args.run)))
    store = ParticleStore(args.store)
    batch = _to_torch(store.read(0, args.n))
    halves = torch.from_numpy(np.load(f"{args.run}/half_sets.npy"))[batch["index"]]
    batch["half_set"] = halves if args.half == "own" else 3 - halves
    weights = None
    if args.weights == "fsc":
        weights = fsc_weights(model)
    truth = np.load(f"{args.ground_truth}/ctf.npz")
    true_mean = 0.5 * (truth["defocus_u_A"] + truth["defocus_v_A"])[batch["index"].numpy()]
    settings = TrainConfig(refine_ctf=True, half_sets=True, ctf_warmup_epochs=0).ctf_refinement()
    corrections = CtfCorrections(store.n_particles, settings, given_ctf_sha256(store.group))
    for iteration in range(args.iterations + 1):
        corrected = corrections.corrected(batch)
        errors = 0.5 * (corrected["ctf"][:, 2] + corrected["ctf"][:, 3]).double().numpy() - true_mean
        print(f"step {iteration}: median error {np.median(np.abs(errors)):.0f} Å, RMS "
              f"{np.sqrt(np.mean(errors ** 2)):.0f} Å, mean {np.mean(errors):+.0f} Å")
        if iteration < args.iterations:
            with torch.no_grad():
                out = model(corrected)
            corrections.step(batch["index"], *model.defocus_normal_equations(corrected, out, weights))


if __name__ == "__main__":
    main()
