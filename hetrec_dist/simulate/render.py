"""Real-space rendering of Gaussian-atom objects: maps and projection images (independent of any Fourier
slice code, so that the projector can be checked against them).

Units: a map voxel holds the density sum_a w_a N3(r - p_a; sigma) (per cubic Angstrom); an image pixel
holds its line integral along z, sum_a w_a N2((u, v) - p_a; sigma) (per square Angstrom), so that
image ~= pixel_size_A * map.sum(axis=0) for the identity pose.
"""

import numpy as np

from hetrec_dist.physics.ctf import ctf_2d


def _gaussian_1d(centres_px, box, sigma_px):
    """exp(-(i - centre)^2 / 2 sigma^2) for pixel indices i: (..., A, box)."""
    grid = np.arange(box, dtype=np.float64)
    return np.exp(-0.5 * ((grid - centres_px[..., None]) / sigma_px) ** 2)


def render_map(positions_A, weights, sigma_A, box, pixel_size_A):
    """The map [z, y, x] of atoms at positions_A (A x 3, origin at voxel box // 2)."""
    centres = positions_A / pixel_size_A + box // 2
    sigma_px = sigma_A / pixel_size_A
    gx, gy, gz = (_gaussian_1d(centres[:, axis], box, sigma_px) for axis in range(3))
    norm = weights / (2 * np.pi * sigma_A ** 2) ** 1.5
    plane = np.einsum("ay,ax->ayx", gy * norm[:, None], gx).reshape(len(weights), -1)
    return (gz.T @ plane).reshape(box, box, box)


def project_atoms(positions_A, weights, sigma_A, rotations, shifts_px, box, pixel_size_A):
    """Images [n, y, x] of atoms (n x A x 3, weights A or n x A) seen at pose matrices R (n x 3 x 3): an atom at
    p lands at (R p)[:2], and the image is translated by -shift_px (see hetrec_dist.physics.rotations)."""
    rotated = np.einsum("nij,naj->nai", rotations, positions_A)
    centres = rotated[..., :2] / pixel_size_A + box // 2 - shifts_px[:, None, :]
    sigma_px = sigma_A / pixel_size_A
    gx, gy = _gaussian_1d(centres[..., 0], box, sigma_px), _gaussian_1d(centres[..., 1], box, sigma_px)
    norm = np.asarray(weights) / (2 * np.pi * sigma_A ** 2)
    return np.matmul(np.swapaxes(gy * norm[..., None], 1, 2), gx)


def apply_ctf(images, ctf_params, pixel_size_A):
    """Multiply each image's Fourier transform by its CTF (ctf_params: n x 9, store ctf columns)."""
    box = images.shape[-1]
    freqs = np.fft.fftfreq(box, d=pixel_size_A)
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    p = [ctf_params[:, i, None, None] for i in range(2, 9)]
    ctf = ctf_2d(fx, fy, *p)
    spectrum = np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1)))
    return np.fft.fftshift(np.fft.ifft2(spectrum * ctf).real, axes=(-2, -1))
