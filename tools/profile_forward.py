"""Where the forward pass goes: each part of HetVAE.forward timed on its own, at one box.

    python -W ignore tools/profile_forward.py [--box 128] [--batch 256] [--repeats 5]

The default model at 128 Å of box (the default simulation's), random poses, random images; each part is
run once to warm up and then --repeats times, and its mean time printed in ms. Run it with nothing else on the
machine.
"""

import argparse
import time

import numpy as np
import torch

from hetrec_dist.model.hetvae import HetVAE
from hetrec_dist.physics import projector
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.train.config import TrainConfig


def timed_ms(repeats, function, *args):
    function(*args)
    started = time.perf_counter()
    for _ in range(repeats):
        function(*args)
    return 1e3 * (time.perf_counter() - started) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    box, pixel_size_A, n = args.box, 128 / args.box, args.batch
    model = HetVAE(TrainConfig().model_shape(box, pixel_size_A), pixel_size_A)
    angles = random_relion_euler(n, np.random.default_rng(0))
    rotations = torch.from_numpy(matrices_from_relion_euler(*angles)).float()
    points, half_ball = model.disk.coords, model.half_ball
    k3 = points @ rotations[:, :2, :]
    k3 = torch.where((k3[..., 0] < 0)[..., None], -k3, k3)
    floor = torch.floor(k3)
    geometry = projector.slice_geometry(rotations, points, half_ball)
    weights, grad_slices = torch.randn(n, model.shape.n_basis + 1), torch.randn(n, points.shape[0], 2)
    ctf = torch.tensor([[box, pixel_size_A, 15000, 15000, 0, 300, 2.7, 0.1, 0]] * n).float()
    batch = {"images": torch.randn(n, box, box), "shifts": torch.zeros(n, 2), "ctf": ctf, "rotations": rotations,
             "optics_group": torch.ones(n, dtype=torch.int32)}
    parts = {
        "slice_geometry": (projector.slice_geometry, rotations, points, half_ball),
        "  corner rows": (half_ball.corner_rows, floor.int()),
        "  trilinear weights": (projector._trilinear_weights, k3 - floor),
        "  interpolation matrices (T, T^T)": (projector._interpolation_matrices, geometry.rows,
                                              geometry.trilinear, half_ball.n_voxels),
        "    sort of T's entries by column": (lambda c: torch.sort(c, stable=True),
                                              geometry.interpolation.col_indices()),
        "project (T @ basis)": (projector.project, model.basis.detach(), weights, geometry),
        "basis gradient (T^T @ ...)": (projector.basis_gradient, geometry, grad_slices, weights),
        "images' spectra, shifted": (model.observed_spectra, batch),
        "encoder": (model.encode, model.observed_spectra(batch)),
        "forward, whole": (lambda b: model(b, basis_factors=True), batch),
    }
    print(f"box {box}, {n} images, {points.shape[0]} Fourier points each, {geometry.rows.numel():,} entries of T")
    for name, (function, *inputs) in parts.items():
        print(f"{name}: {timed_ms(args.repeats, function, *inputs):.1f} ms")


if __name__ == "__main__":
    main()
