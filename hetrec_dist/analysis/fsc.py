"""Fourier shell correlation between two maps of the same box and pixel size."""

import numpy as np


def fsc_curve(map_a, map_b):
    """FSC per shell of integer radius 0 .. D/2 - 1 (voxels), via the full 3-D FFT."""
    box = map_a.shape[0]
    fa, fb = np.fft.fftn(map_a), np.fft.fftn(map_b)
    freq = np.fft.fftfreq(box) * box
    radius = np.sqrt(freq[:, None, None] ** 2 + freq[None, :, None] ** 2 + freq[None, None, :] ** 2)
    shell = np.round(radius).astype(int).ravel()
    keep = shell < box // 2
    shell = shell[keep]
    cross = np.bincount(shell, (fa * np.conj(fb)).real.ravel()[keep], minlength=box // 2)
    power_a = np.bincount(shell, (np.abs(fa) ** 2).ravel()[keep], minlength=box // 2)
    power_b = np.bincount(shell, (np.abs(fb) ** 2).ravel()[keep], minlength=box // 2)
    return cross / np.sqrt(np.maximum(power_a * power_b, 1e-300))


def resolution_at(curve, threshold, box, pixel_size_A):
    """Resolution (A) where the FSC first falls below `threshold` (shells from 1); Nyquist if it never does."""
    below = np.flatnonzero(curve[1:] < threshold)
    shell = below[0] + 1 if len(below) else len(curve)
    return box * pixel_size_A / shell


def fsc_summary(map_a, map_b, pixel_size_A):
    curve = fsc_curve(map_a, map_b)
    box = map_a.shape[0]
    return {"resolution_0.5_A": resolution_at(curve, 0.5, box, pixel_size_A),
            "resolution_0.143_A": resolution_at(curve, 0.143, box, pixel_size_A),
            "mean_fsc": float(curve[1:].mean()),
            "curve": curve.tolist()}


def soft_sphere(box, radius_fraction=0.45, edge_px=3.0):
    """A spherical mask of radius radius_fraction * box with a raised-cosine edge of edge_px."""
    grid = np.arange(box) - box // 2
    radius = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    inner = radius_fraction * box - edge_px
    return np.clip(0.5 * (1 + np.cos(np.pi * np.clip(radius - inner, 0, edge_px) / edge_px)), 0, 1)
