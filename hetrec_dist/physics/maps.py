"""Between real-space maps and half-ball Fourier coefficients (conventions in fourier_grid).

Scale: coefficients are apix * fftn(ifftshift(V)) / D, so that a central slice equals the orthonormal
rfft2 of the image apix * sum_z V (the line integral of the density, as the simulator renders images).
"""

import torch


def _wrapped_index(half_ball, box):
    """Flat index of each voxel into a D x D x (D/2+1) rfftn array [z mod D, y mod D, x]."""
    x, y, z = half_ball.coords.unbind(1)
    return ((z % box) * box + (y % box)) * (box // 2 + 1) + x


def map_to_half_ball(volume, half_ball, pixel_size_A):
    """Complex coefficients (V,) of a map [z, y, x] (a D^3 tensor) at the half ball's voxels.
    Voxels beyond D/2 wrap around (the basis margin); keep the ball's radius below D/2."""
    box = volume.shape[0]
    spectrum = torch.fft.rfftn(torch.fft.ifftshift(volume)) * (pixel_size_A / box)
    return spectrum.reshape(-1)[_wrapped_index(half_ball, box)]


def half_ball_to_map(coefficients, half_ball, box, pixel_size_A):
    """The real map [z, y, x] (D^3) of half-ball coefficients (V,), Hermitian-completed by irfftn.
    Voxels outside |k| < D/2 (the interpolation margin) are left out."""
    keep = (half_ball.coords.abs().amax(1) < box // 2) & (half_ball.coords[:, 0] <= box // 2)
    spectrum = torch.zeros(box * box * (box // 2 + 1), dtype=coefficients.dtype, device=coefficients.device)
    spectrum[_wrapped_index(half_ball, box)[keep]] = coefficients[keep]
    volume = torch.fft.irfftn(spectrum.view(box, box, box // 2 + 1), s=(box, box, box))
    return torch.fft.fftshift(volume) * (box / pixel_size_A)
