"""Bytes each rank sends per step to reduce the basis gradient, per strategy, from real touched sets.

    python tools/reducer_bytes_table.py [--boxes 64 128 256] [--batches 64 256 1024] [--ranks 2 8 64]

For every (box, global batch, ranks): uniformly random poses, dealt evenly to the ranks; each rank's
touched voxels are those its images' central slices (radius D/2 - 1) read by trilinear interpolation,
exactly as the projector computes them; the counts go into the reducer's own byte formulas (ring
collectives, float32, K = 16). auto is what reduce_basis_gradient picks (its mask reduce included);
"plain dense" is a dense all-reduce of the gradient alone, what DDP or DeepSpeed would send.
"""

import argparse

import numpy as np
import torch

from hetrec_dist.distributed.sparse_reducer import STRATEGIES, bytes_sent, payload_bytes
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.projector import factor_columns
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler

N_COMPONENTS = 17  # K = 16 and the mean
IMAGES_PER_PASS = 32


def touched(rotations, disk, half_ball):
    """Boolean mask of the basis rows read by the slices at these poses (computed in passes)."""
    mask = torch.zeros(half_ball.n_voxels, dtype=torch.bool)
    for start in range(0, len(rotations), IMAGES_PER_PASS):
        k3 = disk.coords @ rotations[start:start + IMAGES_PER_PASS, :2, :]
        k3 = torch.where((k3[..., 0] < 0)[..., None], -k3, k3)
        mask[half_ball.corner_rows(torch.floor(k3).long()).reshape(-1).long()] = True
    return mask


def table_row(box, batch, ranks, rng):
    half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
    rotations = torch.from_numpy(matrices_from_relion_euler(*random_relion_euler(batch, rng))).float()
    masks = [touched(r, disk, half_ball) for r in rotations.chunk(ranks)]
    union = torch.stack(masks).any(0)
    max_nnz = max(int(m.sum()) for m in masks)
    n_rows, n_points = half_ball.n_voxels, disk.coords.shape[0]
    payload = payload_bytes(n_rows, N_COMPONENTS, factor_columns(N_COMPONENTS, n_points), max_nnz, -(-batch // ranks),
                            int(union.sum()), ranks)
    sent = {s: bytes_sent(s, payload, n_rows, ranks) for s in STRATEGIES + ("auto",)}
    return {"union_density": float(union.float().mean()), "plain dense": payload["dense"],
            "auto picks": min(payload, key=payload.get), **sent}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 8, 64])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    columns = ["plain dense", "dense", "gather", "union", "factors", "auto"]
    print("| box | global batch | ranks | union density | " + " | ".join(f"{c} MB" for c in columns)
          + " | auto picks |")
    print("|---" * (5 + len(columns)) + "|")
    for box in args.boxes:
        for batch in args.batches:
            for ranks in args.ranks:
                if ranks > batch:
                    continue
                row = table_row(box, batch, ranks, rng)
                print(f"| {box} | {batch} | {ranks} | {row['union_density']:.2f} | "
                      + " | ".join(f"{row[c] / 1e6:.1f}" for c in columns) + f" | {row['auto picks']} |", flush=True)


if __name__ == "__main__":
    main()
