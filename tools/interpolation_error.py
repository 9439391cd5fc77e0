"""Projector accuracy per Fourier shell: slices of a loaded ground-truth map against the FT of its real-space
projections (the independent computation of tests/test_projector.py, resolved by shell).

    python tools/interpolation_error.py [--box 64] [--apix 2.0] [--n 50]
"""

import argparse

import numpy as np
import torch

from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.maps import map_to_half_ball
from hetrec_dist.physics.projector import project, slice_geometry
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.render import project_atoms, render_map


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--apix", type=float, default=2.0)
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    box, apix, n = args.box, args.apix, args.n
    model = hinge_model()
    positions = model.positions([0.5])
    volume = torch.from_numpy(render_map(positions[0], model.weights, model.sigma_A, box, apix))
    half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
    basis = torch.view_as_real(map_to_half_ball(volume, half_ball, apix)).T.reshape(2, -1).T.contiguous()
    rotations = matrices_from_relion_euler(*random_relion_euler(n, np.random.default_rng(1)))
    images = project_atoms(np.repeat(positions, n, 0), model.weights, model.sigma_A, rotations, np.zeros((n, 2)),
                           box, apix)
    expected = disk.take(torch.fft.rfft2(torch.fft.ifftshift(torch.from_numpy(images), dim=(-2, -1)), norm="ortho"))
    geometry = slice_geometry(torch.from_numpy(rotations), disk.coords, half_ball)
    slices = torch.view_as_complex(project(basis, torch.ones(n, 1, dtype=torch.float64), geometry).contiguous())
    shells = disk.coords.norm(dim=1).round().long()
    for shell in range(0, int(shells.max()) + 1, 3):
        inside = shells == shell
        error = (slices[:, inside] - expected[:, inside]).abs().pow(2).sum() / expected[:, inside].abs().pow(2).sum()
        print(f"shell {shell:2d} ({box * apix / max(shell, 1):6.1f} A): relative squared error {error:.3f}")


if __name__ == "__main__":
    main()
