"""Small rotations, and the derivatives of a central slice with respect to its pose, for pose refinement.

A pose matrix R (physics.rotations' convention) samples the basis at k3 = (kx, ky, 0) @ R. A correction d
(axis-angle, radians) gives the pose R @ Exp(d), which samples at k3 @ Exp(d) = k3 + k3 x d + O(|d|²): so
dk3/dd_j = k3 x e_j, and a slice S with spatial gradient G = dS/dk3 has dS/dd = G x k3 (per point, complex
G, real k3). G is the derivative of the trilinear interpolation: per axis the weights (1 - f, f) of a
point at fraction f of its cell differ in f as (-1, 1); where a point was Friedel-flipped (S = conj(V(-k3)))
G = -conj(dV/dq) at q = -k3.

A shift correction s (pixels) moves the image's phase: the shift-corrected data exp(-2 pi i (s . k) / D) x
data change as -2 pi i k_j / D x data along s_j (the convention of HetVAE.observed_spectra). Their distance
to a slice is the distance of the data to the slice times exp(+2 pi i (s . k) / D), which is how
HetVAE.pose_normal_equations takes the derivative: on the model's side, where it holds no noise.

Rotations as axis-angle vectors are composed through unit quaternions (w, x, y, z), which stay exact at
any angle below 180 degrees, on any device.
"""

import torch

from hetrec_dist.physics.projector import SliceGeometry, _conjugate_where, _trilinear_weights


def quaternions_from_axis_angle(axis_angle: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (... x 4, (w, x, y, z)) of rotations by |v| radians about v (... x 3)."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    sin_half_over_angle = 0.5 * torch.sinc(angle / (2 * torch.pi))  # sin(angle / 2) / angle, 1/2 at 0
    return torch.cat([torch.cos(angle / 2), axis_angle * sin_half_over_angle], -1)


def axis_angle_from_quaternions(quaternions: torch.Tensor) -> torch.Tensor:
    """The inverse of quaternions_from_axis_angle (angles in [0, pi])."""
    w, xyz = quaternions[..., :1], quaternions[..., 1:]
    xyz = torch.where(w < 0, -xyz, xyz)  # q and -q are one rotation: take the one of angle <= pi
    sin_half = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, w.abs())
    small = sin_half < 1e-12
    return xyz * torch.where(small, 2.0 / w.abs().clamp_min(1e-12), angle / sin_half.clamp_min(1e-30))


def _quaternion_product(a, b):
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def compose_axis_angle(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """The axis-angle vector (... x 3) of Exp(first) @ Exp(then)."""
    product = _quaternion_product(quaternions_from_axis_angle(first), quaternions_from_axis_angle(then))
    return axis_angle_from_quaternions(product)


def matrices_from_axis_angle(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices Exp(v) (... x 3 x 3) of axis-angle vectors v (... x 3, radians)."""
    w, x, y, z = quaternions_from_axis_angle(axis_angle).unbind(-1)
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def slice_spatial_gradient(basis: torch.Tensor, weights: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """G = dS/dk3, the derivative of each slice point (physics.projector.project's slices, B x P) with respect
    to its unflipped 3-D position k3, in voxels: B x P x 3 (x, y, z) x 2 (re, im). basis: n_rows x 2(K+1),
    project's layout; weights: B x K+1."""
    n_images, n_points = geometry.flipped.shape
    n_components = weights.shape[1]
    along_axes = []
    for axis in range(3):
        derivative = _trilinear_weights(geometry.fractions, derivative_axis=axis)
        interpolated = geometry.interpolate(basis, derivative).view(n_images, -1, n_components)
        along_axes.append(torch.bmm(interpolated, weights[:, :, None]).view(n_images, n_points, 2))
    gradient = torch.stack(along_axes, 2)  # at the flipped point q
    flipped = geometry.flipped[..., None]
    sign = torch.where(flipped, -1.0, 1.0).to(gradient.dtype)[..., None]
    return _conjugate_where(gradient, flipped) * sign


def rotation_jacobian(spatial_gradient: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """dS/dd (B x P x 3 x 2 (re, im)) for the correction d of the pose R @ Exp(d), from G = dS/dk3
    (slice_spatial_gradient) and the points' positions k3 = (kx, ky, 0) @ R (B x P x 3)."""
    return torch.linalg.cross(spatial_gradient, positions[..., None].expand_as(spatial_gradient), dim=2)

