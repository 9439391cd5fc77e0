"""Pose refinement against a trained model held fixed: what the images and the model alone say about the poses.

Takes a run (e.g. trained on exact poses), a store (the same particles, exact or with errors) and the
simulation's ground truth; refines the first --n particles' poses for --iterations steps against the run's
model, as `hetrec train --refine-poses` does each time a particle is in a batch, and prints after each step
the median angle and shift error against the truth, the data term, and the images' posterior RMS
precision. No training happens, so what remains is the floor the model and the noise set:
    python tools/pose_refinement_fixed_model.py RUN STORE GROUND_TRUTH [--n 256] [--iterations 8]
"""

import argparse

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from hetrec_dist.data.reader import ParticleStore, _to_torch
from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint
from hetrec_dist.train.config import TrainConfig
from hetrec_dist.train.inference import load_model
from hetrec_dist.train.pose_refinement import PoseCorrections, given_poses_sha256


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("store")
    parser.add_argument("ground_truth")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=8)

    args = parser.parse_args()
    model = load_model(load_checkpoint(last_checkpoint(args.run)))
    store = ParticleStore(args.store)
    batch = _to_torch(store.read(0, args.n))
    if model.shape.n_half_sets == 2:
        batch["half_set"] = torch.from_numpy(np.load(f"{args.run}/half_sets.npy"))[batch["index"]]
    truth = np.load(f"{args.ground_truth}/poses.npz")
    settings = TrainConfig(refine_poses=True, pose_warmup_epochs=0).pose_refinement(model.pixel_size_A)
    corrections = PoseCorrections(store.n_particles, settings, given_poses_sha256(store.group))
    index = batch["index"].numpy()
    for iteration in range(args.iterations + 1):
        corrected = corrections.corrected(batch)
        relative = np.einsum("nij,nkj->nik", corrected["rotations"].double().numpy(), truth["rotations"][index])
        angles = np.degrees(Rotation.from_matrix(relative).magnitude())
        shifts = np.linalg.norm(corrected["shifts"].double().numpy() - truth["shifts"][index], axis=1)
        with torch.no_grad():
            out = model(corrected)
        gradient, hessian = model.pose_normal_equations(corrected, out)
        covariance = torch.diagonal(torch.linalg.inv(hessian.double()), dim1=1, dim2=2)
        precision_deg = np.degrees(covariance[:, :3].sum(1).sqrt().numpy())
        print(f"step {iteration}: median error {np.median(angles):.3f}° {np.median(shifts):.3f} px; data term "
              f"{out['data'].item():.5f}; images' rotation precision (data alone) {np.median(precision_deg):.2f}° RMS")
        if iteration < args.iterations:
            corrections.step(batch["index"], gradient, hessian)


if __name__ == "__main__":
    main()
