"""Bytes each rank sends per step to reduce the basis gradient, per strategy, from real touched sets.

    python tools/reducer_bytes_table.py [--boxes 64 128 256] [--batches 64 256 1024] [--ranks 2 8 64]

For every (box, global batch, ranks): uniformly random poses, dealt evenly to the ranks; each rank's
touched voxels are those its images' central slices (radius D/2 - 1) read by trilinear interpolation,
exactly as the projector computes them; the counts go into the reducer's own byte formulas (ring
collectives, float32, K = 16). auto is what reduce_sparse_gradient would pick (mask reduce included).
"""

import argparse

import numpy as np
import torch

from hetrec_dist.distributed.sparse_reducer import allgather_bytes, allreduce_bytes, payload_bytes
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
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
    n_rows, columns = half_ball.n_voxels, 2 * N_COMPONENTS
    costs = payload_bytes(n_rows, columns, max_nnz, int(union.sum()), ranks)
    counts, mask = allreduce_bytes(8, ranks), allreduce_bytes(n_rows, ranks)
    sent = {"dense": counts + mask + costs["dense"], "gather": counts + costs["gather"],
            "union": counts + mask + costs["union"]}
    sent["auto"] = counts + mask + min(costs.values())
    per_image = 9 + N_COMPONENTS + 2 * disk.coords.shape[0]
    sent["factors"] = allgather_bytes(8, ranks) + allgather_bytes(-(-batch // ranks) * per_image * 4, ranks)
    return {"union_density": float(union.float().mean()), "plain dense": allreduce_bytes(n_rows * columns * 4, ranks), **sent}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 8, 64])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    columns = ["plain dense", "dense", "gather", "union", "factors", "auto"]
    print("| box | global batch | ranks | union density | " + " | ".join(f"{c} MB" for c in columns) + " |")
    print("|---" * (4 + len(columns)) + "|")
    for box in args.boxes:
        for batch in args.batches:
            for ranks in args.ranks:
                if ranks > batch:
                    continue
                row = table_row(box, batch, ranks, rng)
                print(f"| {box} | {batch} | {ranks} | {row['union_density']:.2f} | "
                      + " | ".join(f"{row[c] / 1e6:.1f}" for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
