"""Time the basis' optimizer step: torch's SparseAdam against RowSparseAdam (train/row_adam.py), side by side.

    python tools/bench_row_adam.py [--boxes 64 128 256] [--steps 20]

For each box: the default model's basis (K = 16, the half-ball of the 4 Å radius at 128 Å of box, i.e. the
default settings on the default simulation) and the rows a batch of 256 images touches (measured from
real slice geometry at random poses); both optimizers take the same --steps steps from the same state, in
alternation, and the mean time per step of each is printed with their ratio. With --half-sets, the basis has
two halves and each half's 128 images touch only their own.
"""

import argparse
import time

import numpy as np
import torch

from hetrec_dist.model.hetvae import HetVAE
from hetrec_dist.physics.projector import slice_geometry
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.train.config import TrainConfig
from hetrec_dist.train.row_adam import RowSparseAdam


def touched_rows(model, n_images, rng, half_sets):
    rotations = torch.from_numpy(matrices_from_relion_euler(*random_relion_euler(n_images, rng))).float()
    offsets = None
    if half_sets:
        offsets = torch.from_numpy(rng.integers(0, 2, n_images)) * model.half_ball.n_voxels
    geometry = slice_geometry(rotations, model.disk.coords, model.half_ball, offsets, 2 if half_sets else 1)
    return geometry.touched_rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--half-sets", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for box in args.boxes:
        config = TrainConfig(half_sets=args.half_sets)
        model = HetVAE(config.model_shape(box, 128 / box), 128 / box)
        basis = model.basis.detach()
        parameters = [basis.clone().requires_grad_() for _ in range(2)]
        optimizers = [torch.optim.SparseAdam([parameters[0]], lr=1e-2), RowSparseAdam([parameters[1]], lr=1e-2)]
        times = [[], []]
        for _ in range(args.steps):
            rows = touched_rows(model, 256, rng, args.half_sets)
            grad = torch.sparse_coo_tensor(rows[None], torch.randn(len(rows), basis.shape[1]), basis.shape,
                                           is_coalesced=True, check_invariants=False)
            for i, (parameter, optimizer) in enumerate(zip(parameters, optimizers)):
                parameter.grad = grad
                started = time.perf_counter()
                optimizer.step()
                times[i].append(time.perf_counter() - started)
        assert torch.equal(parameters[0], parameters[1])
        old, new = (np.mean(t[2:]) for t in times)
        print(f"box {box}: basis {basis.shape[0]} x {basis.shape[1]}, {len(rows) / basis.shape[0]:.0%} of rows "
              f"touched: SparseAdam {1e3 * old:.1f} ms, RowSparseAdam {1e3 * new:.1f} ms a step: x{old / new:.2f}")


if __name__ == "__main__":
    main()
