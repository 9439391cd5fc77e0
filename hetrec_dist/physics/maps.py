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


def soft_sphere_mask(n, radius, edge):
    """A sphere (n^3, origin at index 0 as FFTs want it): 1 within `radius` samples, falling to 0 over the
    next `edge` samples (raised cosine), as RELION's soft mask of the particle diameter."""
    grid = torch.fft.fftfreq(n, 1.0 / n)
    distance = torch.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    outside = ((distance - radius) / edge).clamp(0, 1)
    return 0.5 + 0.5 * torch.cos(torch.pi * outside)


class SupportProjector:
    """Confine half-ball volumes to a sphere in real space: to a map, times a soft sphere, back.

    The map is sampled on an n^3 grid with n > 2 x the ball's extent (the spectrum zero-padded), so that every
    basis voxel, interpolation margin included, comes back without wrap-around. radius_px, edge_px: in pixels
    of the images (box `box`)."""

    def __init__(self, half_ball, box, radius_px, edge_px):
        self.n = 2 * half_ball.extent + 2
        self.index = _wrapped_index(half_ball, self.n)
        samples_per_px = self.n / box
        self.mask = soft_sphere_mask(self.n, radius_px * samples_per_px, edge_px * samples_per_px)

    def __call__(self, coefficients):
        """coefficients: V x C complex (C volumes) -> the same, confined."""
        n, n_volumes = self.n, coefficients.shape[1]
        index = self.index.to(coefficients.device)
        spectrum = coefficients.new_zeros(n_volumes, n * n * (n // 2 + 1))
        spectrum[:, index] = coefficients.T
        volumes = torch.fft.irfftn(spectrum.view(n_volumes, n, n, n // 2 + 1), s=(n, n, n), dim=(-3, -2, -1))
        volumes *= self.mask.to(volumes.device, volumes.dtype)
        return torch.fft.rfftn(volumes, dim=(-3, -2, -1)).reshape(n_volumes, -1)[:, index].T
