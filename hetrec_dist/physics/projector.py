"""Central slices of a weighted structural basis, with a sparse basis gradient.

The basis is one real tensor of shape V x 2(K+1): row v holds, for voxel v of a HalfBall, the real parts
of its K+1 complex coefficients followed by their imaginary parts (component 0 is the mean volume). An
image with weights w (K+1, w[0] = 1) sees the volume sum_k w_k basis_k. Its central slice at pose R: each
half-disk point k2 goes to k3 = (k2, 0) @ R; where k3.x < 0 the point is flipped to -k3 and the value
conjugated (Friedel); the value is the trilinear interpolation of the 8 voxels around k3.

Backward never forms a dense V x 2(K+1) gradient: it returns a coalesced sparse COO tensor holding only the
rows of voxels that the batch's slices touched.
"""

import dataclasses

import torch

IMAGES_PER_PASS = 32  # images whose gathered basis rows are in memory at once


@dataclasses.dataclass
class SliceGeometry:
    """Where a batch's slices fall in the basis: rows (B x P x 8) of the 8 neighbours of every point, their
    trilinear weights (B x P x 8) and whether the point was Friedel-flipped (B x P)."""
    rows: torch.Tensor
    trilinear: torch.Tensor
    flipped: torch.Tensor


def slice_geometry(rotations, points_2d, half_ball):
    """Geometry of the central slices at poses `rotations` (B x 3 x 3) of 2-D points (P x 2, (kx, ky))."""
    k3 = points_2d.to(rotations.dtype) @ rotations[:, :2, :]  # B x P x 3
    flipped = k3[..., 0] < 0
    k3 = torch.where(flipped[..., None], -k3, k3)
    floor = torch.floor(k3)
    frac = k3 - floor
    base = floor.long()
    corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.long)
    voxels = base[:, :, None, :] + corners  # B x P x 8 x 3
    corner_weights = torch.where(corners.bool(), frac[:, :, None, :], 1 - frac[:, :, None, :])
    return SliceGeometry(half_ball.rows(voxels), corner_weights.prod(-1), flipped)


def _conjugate_where(values, flipped):
    """values (..., 2) as (re, im); negate im where flipped."""
    sign = torch.where(flipped, -1.0, 1.0).to(values.dtype)
    return torch.stack([values[..., 0], values[..., 1] * sign], -1)


def _gather(basis, rows, n_components):
    """Basis rows for rows (G x P x 8) as G x (P*8*2) x (K+1)."""
    return basis[rows.reshape(-1)].view(rows.shape[0], -1, n_components)


class _SparseSlice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, basis, weights, rows, trilinear, flipped):
        n_images, n_points, _ = rows.shape
        n_components = weights.shape[1]
        out = basis.new_empty(n_images, n_points, 2)
        for start in range(0, n_images, IMAGES_PER_PASS):
            part = slice(start, start + IMAGES_PER_PASS)
            gathered = _gather(basis, rows[part], n_components)
            combined = torch.bmm(gathered, weights[part, :, None]).view(-1, n_points, 8, 2)
            out[part] = (combined * trilinear[part, :, :, None]).sum(2)
        ctx.save_for_backward(basis, weights, rows, trilinear, flipped)
        return _conjugate_where(out, flipped)

    @staticmethod
    def backward(ctx, grad_out):
        basis, weights, rows, trilinear, flipped = ctx.saved_tensors
        n_components = weights.shape[1]
        grad_slice = _conjugate_where(grad_out, flipped)
        touched = torch.zeros(basis.shape[0], dtype=torch.bool, device=basis.device)
        touched[rows.reshape(-1)] = True
        touched_rows = touched.nonzero().squeeze(1)
        position = torch.cumsum(touched, 0) - 1
        grad_rows = basis.new_zeros(len(touched_rows), 2 * n_components)
        grad_weights = torch.zeros_like(weights)
        for start in range(0, rows.shape[0], IMAGES_PER_PASS):
            part = slice(start, start + IMAGES_PER_PASS)
            # per (image, point, neighbour): trilinear weight x slice gradient, one complex number
            factors = (trilinear[part, :, :, None] * grad_slice[part, :, None, :]).flatten(1)[:, None, :]
            grad_weights[part] = torch.bmm(factors, _gather(basis, rows[part], n_components)).squeeze(1)
            n_part = factors.shape[0]
            outer = factors.view(n_part, -1, 2, 1) * weights[part, None, None, :]  # G x P*8 x 2 x K+1
            grad_rows.index_add_(0, position[rows[part].reshape(-1)], outer.reshape(-1, 2 * n_components))
        grad_basis = torch.sparse_coo_tensor(touched_rows[None], grad_rows, basis.shape, is_coalesced=True,
                                             check_invariants=False)
        return grad_basis, grad_weights, None, None, None


def project(basis, weights, geometry):
    """Slices (B x P x 2, (re, im)) of the basis weighted by `weights` (B x K+1) at `geometry`."""
    return _SparseSlice.apply(basis, weights, geometry.rows, geometry.trilinear, geometry.flipped)


def project_dense_reference(basis, weights, geometry):
    """The same slices by plain autograd-differentiable gathering (dense gradient; for tests)."""
    n_components = weights.shape[1]
    gathered = basis[geometry.rows].view(*geometry.rows.shape, 2, n_components)
    values = (gathered * weights[:, None, None, None, :]).sum(-1)
    return _conjugate_where((values * geometry.trilinear[..., None]).sum(2), geometry.flipped)
