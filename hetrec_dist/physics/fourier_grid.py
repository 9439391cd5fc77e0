"""Fourier grids of the structural basis and of the images.

Index conventions (one place for all of them):
- 2-D: an image's Fourier transform is torch.fft.rfft2(ifftshift(image), norm="ortho"), shape D x (D/2+1),
  element [ky mod D, kx] for integer frequencies kx >= 0, ky in [-D/2, D/2).
- 3-D: a map V[z, y, x] (origin at voxel D//2) has the transform fftn(ifftshift(V)), element
  [kz mod D, ky mod D, kx mod D]. The basis keeps only its Hermitian half kx >= 0, inside a ball.
"""

import dataclasses
import math

import torch


def squared_magnitude(coefficients: torch.Tensor) -> torch.Tensor:
    """|c|² of complex coefficients (any shape; real, of their precision), as Re(c c*): about half the time of
    abs() ** 2, which takes a square root and, backward, its sign, on the CPU."""
    return (coefficients * coefficients.conj()).real


class _Grid:
    def to(self, device):
        """The same grid with its tensors on `device`."""
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v.to(device) for k, v in tensors.items() if isinstance(v, torch.Tensor)})


@dataclasses.dataclass
class HalfDisk(_Grid):
    """The rfft2 coefficients of a D x D image with |k| <= radius: integer coordinates (P x 2, as kx, ky),
    their flat index into the D x (D/2+1) rfft2 array, and loss weights (2 for kx > 0, which stand for
    their Friedel mates too, 1 on the kx = 0 column)."""
    box: int
    radius: float
    coords: torch.Tensor
    flat_index: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def build(cls, box: int, radius: float) -> "HalfDisk":
        ky = torch.arange(-(box // 2), box // 2)
        kx = torch.arange(0, box // 2 + 1)
        grid_y, grid_x = torch.meshgrid(ky, kx, indexing="ij")
        inside = (grid_x ** 2 + grid_y ** 2) <= radius ** 2
        inside &= ~((grid_x == 0) & (grid_y < 0))  # the kx = 0 column is Hermitian: keep ky >= 0
        kx_in, ky_in = grid_x[inside], grid_y[inside]
        flat_index = (ky_in % box) * (box // 2 + 1) + kx_in
        weights = torch.where(kx_in > 0, 2.0, 1.0)
        return cls(box, radius, torch.stack([kx_in, ky_in], 1).float(), flat_index, weights)

    def take(self, spectra: torch.Tensor) -> torch.Tensor:
        """The half-disk coefficients (B x P) of rfft2 spectra (B x D x D/2+1)."""
        return spectra.reshape(spectra.shape[0], -1)[:, self.flat_index]

    def image_spectra(self, images: torch.Tensor, shifts_px: torch.Tensor | None = None, std: float = 1.0
                      ) -> torch.Tensor:
        """The half-disk coefficients (B x P, complex) of images (B x D x D, centre at pixel D // 2), as
        rfft2(ifftshift(image), norm="ortho") / std; with shifts_px (B x 2, the pose's shift: physics.rotations),
        of the image moved back by it, i.e. times exp(-2 pi i k.s / D)."""
        spectra = self.take(torch.fft.rfft2(images, norm="ortho"))
        # rfft2(ifftshift(image)) = rfft2(image) x exp(2 pi i (kx + ky) (D // 2) / D): that phase on the half-disk
        # instead of an ifftshift of every image, which cost as much as the FFT
        centring = (2 * torch.pi * (self.box // 2) / self.box) * self.coords.double().sum(1)  # up to 400 rad
        spectra = spectra * (torch.polar(torch.ones_like(centring), centring).to(spectra.dtype) / std)
        if shifts_px is None:
            return spectra
        coords = self.coords.to(spectra.real.dtype)
        phase = -2 * torch.pi * (shifts_px.to(coords.dtype) @ coords.T) / self.box
        return spectra * torch.polar(torch.ones_like(phase), phase)


@dataclasses.dataclass
class HalfBall(_Grid):
    """The voxels (x >= 0) of the basis: every integer point within `radius` + 2 of the origin, so that each
    trilinear neighbour of a point within `radius` exists. `lookup[x, y + R, z + R]` is a voxel's row
    (or -1), R = `extent`."""
    radius: float
    extent: int
    coords: torch.Tensor   # V x 3 (x, y, z)
    lookup: torch.Tensor   # (R + 1) x (2R + 1) x (2R + 1), int32

    @classmethod
    def build(cls, radius: float) -> "HalfBall":
        extent = int(math.ceil(radius)) + 2
        span = torch.arange(-extent, extent + 1)
        x, y, z = torch.meshgrid(torch.arange(0, extent + 1), span, span, indexing="ij")
        inside = (x ** 2 + y ** 2 + z ** 2) <= (radius + 2) ** 2
        lookup = torch.full(x.shape, -1, dtype=torch.int32)
        lookup[inside] = torch.arange(int(inside.sum()), dtype=torch.int32)
        coords = torch.stack([x[inside], y[inside], z[inside]], 1)
        return cls(radius, extent, coords, lookup)

    @property
    def n_voxels(self) -> int:
        return self.coords.shape[0]

    def corner_rows(self, floor_voxels: torch.Tensor) -> torch.Tensor:
        """Rows (..., 8) of the 8 voxels (x + i, y + j, z + k), i, j, k in {0, 1} (i slowest) above each
        integer voxel (..., 3), without forming their coordinates."""
        side = 2 * self.extent + 1
        base = ((floor_voxels[..., 0] * side + floor_voxels[..., 1] + self.extent) * side
                + floor_voxels[..., 2] + self.extent)
        offsets = torch.tensor([i * side * side + j * side + k for i in (0, 1) for j in (0, 1) for k in (0, 1)],
                               dtype=base.dtype, device=floor_voxels.device)
        corners = (base[..., None] + offsets).reshape(-1)
        return self.lookup.view(-1).index_select(0, corners).view(*base.shape, 8)
