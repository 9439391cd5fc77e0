"""Between real-space maps and half-ball Fourier coefficients (conventions in fourier_grid).

Scale: coefficients are apix * fftn(ifftshift(V)) / D, so that a central slice equals the orthonormal
rfft2 of the image apix * sum_z V (the line integral of the density, as the simulator renders images).
"""

import dataclasses

import torch

from hetrec_dist.physics.fourier_grid import HalfBall


def _wrapped_index(half_ball, box):
    """Flat index of each voxel into a D x D x (D/2+1) rfftn array [z mod D, y mod D, x]."""
    x, y, z = half_ball.coords.unbind(1)
    return ((z % box) * box + (y % box)) * (box // 2 + 1) + x


def map_to_half_ball(volume: torch.Tensor, half_ball: HalfBall, pixel_size_A: float) -> torch.Tensor:
    """Complex coefficients (V,) of a map [z, y, x] (a D^3 tensor) at the half ball's voxels.
    Voxels beyond D/2 wrap around (the basis margin); keep the ball's radius below D/2."""
    box = volume.shape[0]
    spectrum = torch.fft.rfftn(torch.fft.ifftshift(volume)) * (pixel_size_A / box)
    return spectrum.reshape(-1)[_wrapped_index(half_ball, box)]


def half_ball_to_map(coefficients: torch.Tensor, half_ball: HalfBall, box: int, pixel_size_A: float) -> torch.Tensor:
    """The real map [z, y, x] (D^3) of half-ball coefficients (V,), Hermitian-completed by irfftn.
    Voxels outside |k| < D/2 (the interpolation margin) are left out."""
    keep = (half_ball.coords.abs().amax(1) < box // 2) & (half_ball.coords[:, 0] <= box // 2)
    spectrum = torch.zeros(box * box * (box // 2 + 1), dtype=coefficients.dtype, device=coefficients.device)
    spectrum[_wrapped_index(half_ball, box)[keep]] = coefficients[keep]
    volume = torch.fft.irfftn(spectrum.view(box, box, box // 2 + 1), s=(box, box, box))
    return torch.fft.fftshift(volume) * (box / pixel_size_A)


def soft_sphere_mask(n: int, radius: float, edge: float, ndim: int = 3) -> torch.Tensor:
    """A sphere (n^ndim; ndim 2: a disk; origin at index 0 as FFTs want it): 1 within `radius` samples,
    falling to 0 over the next `edge` samples (raised cosine), as RELION's soft mask of the particle diameter."""
    grid = torch.fft.fftfreq(n, 1.0 / n)
    squares = [(grid ** 2).view([n if axis == i else 1 for i in range(ndim)]) for axis in range(ndim)]
    distance = torch.sqrt(sum(squares))  # broadcast: one n^ndim array, not one per axis
    outside = ((distance - radius) / edge).clamp(0, 1)
    return 0.5 + 0.5 * torch.cos(torch.pi * outside)


def _separable_pool(volume, pool, radius):
    """max or mean over the (2 radius + 1)^3 cube around every sample of an n^3 volume, wrapping around."""
    width = 2 * radius + 1
    out = volume[None, None]
    for kernel in ((width, 1, 1), (1, width, 1), (1, 1, width)):
        padding = [radius if k > 1 else 0 for k in reversed(kernel) for _ in (0, 1)]
        out = pool(torch.nn.functional.pad(out, padding, mode="circular"), kernel, stride=1)
    return out[0, 0]


@dataclasses.dataclass(frozen=True)
class EnvelopeMask:
    """How a mask follows the density: where the RMS density, low-passed to `lowpass_A` (a Gaussian, half
    amplitude there) and its noise power taken off, exceeds `threshold` x its maximum, widened by
    `dilation_A` and falling to 0 over `edge_A` more (as cryoSPARC's dynamic mask: threshold, near, far)."""
    threshold: float = 0.1
    lowpass_A: float = 10.0
    dilation_A: float = 6.0
    edge_A: float = 4.0


def sample_centred(volume: torch.Tensor, offsets: torch.Tensor, spacing: float) -> torch.Tensor:
    """Trilinear samples (float64, 0 beyond the edge) of a map [z, y, x] centred at D // 2 at the points
    D // 2 + offsets x spacing (pixels of the map) along each axis: a len(offsets)^3 map. E.g. offsets
    arange(B) - B // 2 and spacing D / B resample the map to box B of the same extent, centred at B // 2."""
    size = volume.shape[0]
    # grid_sample's coordinates: -1 and 1 are the centres of the first and last samples
    along = (size // 2 + torch.as_tensor(offsets, dtype=torch.float64) * spacing) * 2 / (size - 1) - 1
    z, y, x = torch.meshgrid(along, along, along, indexing="ij")
    points = torch.stack([x, y, z], dim=-1)[None]  # grid_sample takes (x, y, z) for a [z, y, x] volume
    return torch.nn.functional.grid_sample(torch.as_tensor(volume, dtype=torch.float64)[None, None], points,
                                           mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


class SupportProjector:
    """Confine half-ball volumes to a soft mask in real space: to maps, times the mask, back.

    The maps are sampled on an n^3 grid with n > 2 x the ball's extent (the spectrum zero-padded), so that every
    basis voxel, interpolation margin included, comes back without wrap-around. The mask is a sphere
    (radius_px, falling to 0 over edge_px outside; pixels of the images: box `box`, pixel_size_A), or, when
    called with the directions of the density's variation, that sphere times an envelope of the density."""

    def __init__(self, half_ball: HalfBall, box: int, pixel_size_A: float, radius_px: float, edge_px: float,
                 envelope: EnvelopeMask = EnvelopeMask()):
        self.n = 2 * half_ball.extent + 2
        self.index = _wrapped_index(half_ball, self.n)
        self.samples_per_A = self.n / (box * pixel_size_A)
        self.sphere = soft_sphere_mask(self.n, radius_px * self.n / box, edge_px * self.n / box)
        self.mask, self.envelope = self.sphere, envelope
        self.box, self.focus = box, None
        resolution_A = box * pixel_size_A / half_ball.coords.double().norm(dim=1)  # of each voxel
        self.lowpass = torch.exp(-torch.log(torch.tensor(2.0)) * (envelope.lowpass_A / resolution_A) ** 2)

    def _map(self, coefficients):
        """V complex half-ball coefficients -> the n^3 real map."""
        n = self.n
        spectrum = coefficients.new_zeros(n * n * (n // 2 + 1))
        spectrum[self.index.to(coefficients.device)] = coefficients
        return torch.fft.irfftn(spectrum.view(n, n, n // 2 + 1), s=(n, n, n))

    def set_focus(self, focus: torch.Tensor) -> None:
        """Confine every volume but the first (the mean) to `focus` as well: a box^3 map [z, y, x] of values in
        [0, 1] on the images' grid, centred at box // 2, sampled (trilinear) at this projector's finer grid of
        the same extent (whose index i is the coordinate i, or i - n past the middle)."""
        wrapped = torch.fft.fftfreq(self.n, dtype=torch.float64) * self.n
        self.focus = sample_centred(focus, wrapped, self.box / self.n).to(self.sphere.dtype)

    def __call__(self, coefficients, directions=None):
        """coefficients: V x C complex (C volumes) -> the same, confined. directions (C x M): if given, the
        mask first becomes the sphere times the envelope of the maps sum_c directions[c, m] volume_c, m = 1..M
        (see envelope_mask), and stays so for the calls without. With a focus (set_focus), volumes 2..C are
        confined to the mask times the focus. One map at a time: at box 256 a map is 70 MB."""
        if directions is not None:
            self.mask = self.sphere.to(coefficients.device) * self.envelope_mask(coefficients, directions)
        index = self.index.to(coefficients.device)
        mask = self.mask.to(coefficients.device, coefficients.real.dtype)
        focused = mask if self.focus is None else mask * self.focus.to(mask.device, mask.dtype)
        return torch.stack([torch.fft.rfftn(self._map(volume) * (mask if c == 0 else focused)).reshape(-1)[index]
                            for c, volume in enumerate(coefficients.T)], dim=1)

    def mask_map(self, box: int) -> torch.Tensor:
        """The current mask on the images' grid (box^3, centred at box // 2, as maps are), for display."""
        centred = torch.fft.fftshift(self.mask)
        return torch.nn.functional.interpolate(centred[None, None], size=(box,) * 3, mode="trilinear")[0, 0]

    def envelope_mask(self, coefficients: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """A soft mask around the root-mean-square density of the low-passed maps sum_c directions[c, m]
        volume_c (m = 1..M): its noise power taken off, thresholded at a fraction of its maximum inside the
        sphere, dilated, soft-edged. With directions (1, w) for the mean and the decoder's columns for the
        latent axes, it is the RMS of the model's maps over the latent prior, so it covers every conformation
        the model holds."""
        spec, scale = self.envelope, self.samples_per_A
        lowpass = self.lowpass.to(coefficients.device, coefficients.real.dtype)
        lowpassed = (coefficients * lowpass[:, None]) @ directions.to(coefficients.dtype)
        power = sum(self._map(direction) ** 2 for direction in lowpassed.T)
        sphere = self.sphere.to(power.device) > 0.5
        signal = (power - power[sphere].median()) * sphere  # most of the sphere is solvent: its median is noise
        core = (signal > spec.threshold ** 2 * signal.max()).to(power.dtype)
        dilated = _separable_pool(core, torch.nn.functional.max_pool3d, round(spec.dilation_A * scale))
        return _separable_pool(dilated, torch.nn.functional.avg_pool3d, round(spec.edge_A * scale))
