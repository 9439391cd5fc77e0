"""Where a training step's projector time goes: each part timed on its own, on the compiled loops
(physics.compiled) and on PyTorch's operations, side by side, at one box. Each part includes the slice
geometry, as PyTorch's path builds its interpolation matrices T and T^T when they are first used.

    python -W ignore tools/profile_forward.py [--box 128] [--batch 256] [--repeats 5]

The default model at 128 Å of box (the default simulation's), random poses, random images; each part runs once
to warm up and then --repeats times; the minimum time is printed in ms. Run it with nothing else on the machine.
"""

import argparse
import os
import time

import numpy as np
import torch

from hetrec_dist.model.hetvae import HetVAE
from hetrec_dist.physics import projector
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.train.config import TrainConfig
from hetrec_dist.train.memory import return_freed_memory_to_os


def timed_ms(repeats, function, *args):
    function(*args)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - started)
    return 1e3 * min(times)


def project_and_backward(basis, weights, geometry, grad_slices):
    leaf = weights.clone().requires_grad_()
    slices = projector.project(basis, leaf, geometry)
    slices.backward(grad_slices)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    return_freed_memory_to_os()  # as training does
    torch.manual_seed(0)
    box, pixel_size_A, n = args.box, 128 / args.box, args.batch
    model = HetVAE(TrainConfig().model_shape(box, pixel_size_A), pixel_size_A)
    angles = random_relion_euler(n, np.random.default_rng(0))
    rotations = torch.from_numpy(matrices_from_relion_euler(*angles)).float()
    points, half_ball, basis = model.disk.coords, model.half_ball, model.basis.detach()
    weights, grad_slices = torch.randn(n, model.shape.n_basis + 1), torch.randn(n, points.shape[0], 2)
    ctf = torch.tensor([[box, pixel_size_A, 15000, 15000, 0, 300, 2.7, 0.1, 0]] * n).float()
    batch = {"images": torch.randn(n, box, box), "shifts": torch.zeros(n, 2), "ctf": ctf, "rotations": rotations,
             "optics_group": torch.ones(n, dtype=torch.int32)}
    print(f"box {box}, {n} images, {points.shape[0]} Fourier points each; ms, the minimum of {args.repeats}")
    print(f"{'part':48s} {'compiled':>9s} {'PyTorch':>9s}")
    rows = {}
    fresh = lambda: projector.slice_geometry(rotations, points, half_ball)  # PyTorch's T, T^T: built on use
    for path, setting in (("compiled", "1"), ("PyTorch", "0")):
        os.environ["HETREC_COMPILED_KERNELS"] = setting
        parts = {
            "slice geometry": fresh,
            "slice geometry + project (the slices)": lambda: projector.project(basis, weights, fresh()),
            "slice geometry + project + its backward": lambda: project_and_backward(basis, weights, fresh(),
                                                                                    grad_slices),
            "slice geometry + the basis gradient": lambda: projector.basis_gradient(fresh(), grad_slices, weights),
            "images' spectra, shifted": lambda: model.observed_spectra(batch),
            "encoder": lambda: model.encode(model.observed_spectra(batch)),
            "forward, whole": lambda: model(batch, basis_factors=True),
        }
        for name, function in parts.items():
            rows.setdefault(name, {})[path] = timed_ms(args.repeats, function)
    for name, times in rows.items():
        print(f"{name:48s} {times['compiled']:9.1f} {times['PyTorch']:9.1f}")


if __name__ == "__main__":
    main()
