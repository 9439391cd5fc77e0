"""Central slices of a weighted structural basis, with a sparse basis gradient.

The basis is one real tensor of shape V x 2(K+1): row v holds, for voxel v of a HalfBall, the real parts
of its K+1 complex coefficients followed by their imaginary parts (component 0 is the mean volume). An
image with weights w (K+1) sees the volume sum_k w_k basis_k. Its central slice at pose R: each half-disk
point k2 goes to k3 = (k2, 0) @ R; where k3.x < 0 the point is flipped to -k3 and the value conjugated
(Friedel); the value is the trilinear interpolation of the 8 voxels around k3.

The interpolation is a sparse matrix T (B*P points x U touched voxels, 8 weights a row), so
slices = (T @ basis[touched]) . w. Backward gives the weights' gradient from the interpolated basis, and
the basis gradient T^T @ (slice gradient x w) on the touched rows only, returned as a coalesced sparse COO
tensor: a dense V x 2(K+1) gradient is never formed. Two paths compute them: on float32 CPU tensors, loops
compiled on the fly (physics.compiled: no T^T, whose construction sorts all 8BP entries, and each image's
distinct rows read once); otherwise, and on GPUs, PyTorch's sparse CSR products with T and T^T. The tests
hold them equal.

Half-set training stacks two such bases, one per half-set (2V rows, the second half's at V + v): each
image's `row_offset` (0 or V) selects the rows it reads, so that its gradient reaches its own half's only.
"""

import dataclasses
import functools
import warnings

import torch

from hetrec_dist.physics.compiled import ImageRows, kernels_for
from hetrec_dist.physics.fourier_grid import HalfBall

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclasses.dataclass
class SliceGeometry:
    """Where a batch's slices (B images x P points) fall in the basis.

    trilinear: the weights of the 8 neighbours of every point (B x P x 8); flipped: whether the point was
    Friedel-flipped (B x P); touched_rows: the distinct rows (U, sorted); column_of_row: each basis row's place
    among touched_rows (n_rows, int32; -1 where untouched); n_rows: the basis' rows; positions: the points
    (B x P x 3, voxels, unflipped); row_offsets: each image's first row (B, int32) where the basis stacks
    several half-balls, else None; corner_rows: the neighbours' rows (B x P x 8, int32) as PyTorch's path
    finds them (None on the compiled path, which lists image_rows instead: each image's distinct rows);
    half_ball, points_2d: the grids it was built on, from which another batch's geometry is rebuilt.
    rows and fractions (where each flipped point lies in its voxel cell, B x P x 3, x y z in [0, 1), from which
    the interpolation's spatial derivative follows: physics.pose_derivatives) are derived on first use.
    """
    trilinear: torch.Tensor
    flipped: torch.Tensor
    touched_rows: torch.Tensor
    column_of_row: torch.Tensor
    n_rows: int
    positions: torch.Tensor
    row_offsets: torch.Tensor | None = None
    corner_rows: torch.Tensor | None = None
    image_rows: ImageRows | None = None
    half_ball: HalfBall | None = None
    points_2d: torch.Tensor | None = None

    @functools.cached_property
    def rows(self) -> torch.Tensor:
        """The basis rows of the 8 neighbours of every point (B x P x 8, int32)."""
        if self.corner_rows is not None:
            return self.corner_rows
        slots = self.image_rows.slots
        return torch.gather(self.image_rows.rows, 1, slots.view(slots.shape[0], -1).long()).view_as(slots)

    @functools.cached_property
    def fractions(self) -> torch.Tensor:
        flipped = torch.where(self.flipped[..., None], -self.positions, self.positions)
        return flipped - torch.floor(flipped)

    @functools.cached_property
    def interpolation(self) -> torch.Tensor:
        """T as CSR (B*P x U, the touched rows' columns); built on first use (PyTorch's path only)."""
        columns = self.column_of_row.index_select(0, self.rows.reshape(-1))
        crow = torch.arange(0, columns.numel() + 1, 8, dtype=torch.int32, device=columns.device)
        return _sparse_csr(crow, columns, self.trilinear.reshape(-1), (columns.numel() // 8, len(self.touched_rows)))

    @functools.cached_property
    def interpolation_t(self) -> torch.Tensor:
        """T^T as CSR (U x B*P), by a stable sort of T's entries by column; built on first use."""
        columns = self.interpolation.col_indices()
        order = torch.sort(columns, stable=True).indices
        crow_t = torch.zeros(len(self.touched_rows) + 1, dtype=torch.int32, device=columns.device)
        crow_t[1:] = torch.cumsum(torch.bincount(columns, minlength=len(self.touched_rows)), 0)
        values_t = self.interpolation.values().index_select(0, order)
        point_t = order.bitwise_right_shift_(3).int()  # entry -> its point (8 entries a point)
        return _sparse_csr(crow_t, point_t, values_t, (len(self.touched_rows), columns.numel() // 8))

    def interpolate(self, basis: torch.Tensor, corner_weights: torch.Tensor | None = None) -> torch.Tensor:
        """(B*P) x C: each point's 8 corner rows of basis (n_rows x C) weighted by corner_weights (B x P x 8;
        None: the trilinear weights), by the compiled loop (physics.compiled) or T @ basis[touched_rows]."""
        weights = self.trilinear if corner_weights is None else corner_weights
        kernels = _kernels(basis, weights)
        if kernels is not None:
            return kernels.interpolate(basis.detach().contiguous(), self.rows, weights.contiguous())
        matrix = self.interpolation
        if corner_weights is not None:
            matrix = _sparse_csr(matrix.crow_indices(), matrix.col_indices(), weights.reshape(-1), matrix.shape)
        return matrix @ basis[self.touched_rows]


def _sparse_csr(crow, col, values, shape):
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _trilinear_weights(frac, derivative_axis=None):
    """Weights (..., 8) of the 8 corners (i, j, k), i slowest, of points at `frac` (..., 3) in their cell;
    derivative_axis (0, 1, 2 for x, y, z): their derivatives along that axis instead."""
    lower_upper = [(1 - f, f) for f in (c.contiguous() for c in frac.unbind(-1))]  # contiguous: 2.5x faster
    if derivative_axis is not None:
        lower_upper[derivative_axis] = (-torch.ones_like(frac[..., 0]), torch.ones_like(frac[..., 0]))
    x, y, z = lower_upper
    return torch.stack([x[i] * y[j] * z[k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], -1)


def _corners(k3, half_ball, row_offsets, n_rows):
    """(flipped, rows, trilinear weights, touched rows as an n_rows mask) of points k3 (B x P x 3), in
    PyTorch's operations (compiled.Kernels.corners computes the same, its rows as each image's list)."""
    flipped = k3[..., 0] < 0
    k3 = torch.where(flipped[..., None], -k3, k3)
    floor = torch.floor(k3)
    frac = k3 - floor
    rows = half_ball.corner_rows(floor.int())  # int32: a batch's 8 x B x P corner indices are tens of MB
    if row_offsets is not None:
        rows += row_offsets[:, None, None]
    touched = torch.zeros(n_rows, dtype=torch.bool, device=rows.device)
    touched[rows.reshape(-1)] = True
    return flipped, rows, _trilinear_weights(frac), touched


def slice_geometry(rotations: torch.Tensor, points_2d: torch.Tensor, half_ball: HalfBall,
                   row_offsets: torch.Tensor | None = None, n_stacked: int = 1) -> SliceGeometry:
    """Geometry of the central slices at poses `rotations` (B x 3 x 3) of 2-D points (P x 2, (kx, ky)) in a
    basis of n_stacked half-balls' rows; row_offsets (B, a multiple of half_ball.n_voxels each): where each
    image's half-ball starts (None: all at row 0)."""
    k3 = (points_2d.to(rotations.dtype) @ rotations[:, :2, :]).contiguous()  # B x P x 3
    n_rows = half_ball.n_voxels * n_stacked
    if row_offsets is not None:
        row_offsets = row_offsets.to(k3.device, torch.int32).contiguous()
    kernels = kernels_for(k3)
    if kernels is not None:
        flipped, trilinear, touched, image_rows = kernels.corners(k3, half_ball.lookup, half_ball.extent,
                                                                  row_offsets, n_rows)
        rows = None
    else:
        (flipped, rows, trilinear, touched), image_rows = _corners(k3, half_ball, row_offsets, n_rows), None
    touched_rows = touched.nonzero().squeeze(1)
    column_of_row = torch.cumsum(touched, 0, dtype=torch.int32) - 1
    return SliceGeometry(trilinear, flipped, touched_rows, column_of_row, n_rows, k3, row_offsets, rows, image_rows,
                         half_ball, points_2d)


def _conjugate_where(values, flipped):
    """values (..., 2) as (re, im); negate im where flipped."""
    sign = torch.where(flipped, -1.0, 1.0).to(values.dtype)
    return torch.stack([values[..., 0], values[..., 1] * sign], -1)


class _SparseSlice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, basis, weights, geometry):
        n_images, n_points = geometry.flipped.shape
        ctx.geometry = geometry
        kernels = _kernels(basis, weights, geometry.trilinear)
        ctx.compiled = kernels is not None and geometry.image_rows is not None
        if ctx.compiled:  # nothing of size B x P x 2(K+1) kept: backward reads the rows again
            ctx.save_for_backward(basis, weights)
            return kernels.project(basis.contiguous(), weights.contiguous(), geometry.flipped, geometry.trilinear,
                                   geometry.image_rows)
        interpolated = geometry.interpolate(basis).view(n_images, -1, weights.shape[1])
        slices = torch.bmm(interpolated, weights[:, :, None]).view(n_images, n_points, 2)
        ctx.save_for_backward(interpolated, weights)
        return _conjugate_where(slices, geometry.flipped)

    @staticmethod
    def backward(ctx, grad_slices):
        saved, weights = ctx.saved_tensors
        geometry = ctx.geometry
        n_images, n_components = weights.shape
        if ctx.compiled:  # saved: the basis
            grad_weights = kernels_for(saved).weights_gradient(
                saved.contiguous(), grad_slices.to(saved.dtype).contiguous(), geometry.flipped, geometry.trilinear,
                geometry.image_rows, n_components)
        else:  # saved: the interpolated rows, B x 2P x (K+1)
            conjugated = _conjugate_where(grad_slices, geometry.flipped)
            grad_weights = torch.bmm(conjugated.reshape(n_images, 1, -1), saved).squeeze(1)
        grad_basis = basis_gradient(geometry, grad_slices, weights) if ctx.needs_input_grad[0] else None
        return grad_basis, grad_weights, None


def _kernels(*tensors):
    """physics.compiled's loops where all tensors are CPU tensors of one dtype they take; else None."""
    return kernels_for(tensors[0]) if len({t.dtype for t in tensors}) == 1 else None


def basis_gradient(geometry: SliceGeometry, grad_slices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The sparse basis gradient (coalesced COO, geometry.n_rows x 2(K+1)) from its per-image factors: the
    gradient of the loss with respect to each image's slice (B x P x 2) and the image's weights (B x K+1).
    It is sum_i T_i^T (conj_i(grad_slice_i) x w_i), nonzero only on geometry.touched_rows."""
    n_components = weights.shape[1]
    kernels = _kernels(weights, grad_slices, geometry.trilinear)
    if kernels is not None and geometry.image_rows is not None:
        grad_rows = kernels.scatter(grad_slices.contiguous(), geometry.flipped, weights.contiguous(),
                                    geometry.trilinear, geometry.image_rows, geometry.column_of_row,
                                    len(geometry.touched_rows))
    else:
        grad_rows = _transposed_product(geometry, grad_slices, weights)
    return torch.sparse_coo_tensor(geometry.touched_rows[None], grad_rows, (geometry.n_rows, 2 * n_components),
                                   is_coalesced=True, check_invariants=False)


def _transposed_product(geometry, grad_slices, weights):
    """basis_gradient's rows (U x 2(K+1)) in PyTorch's operations: T^T @ (conj(grad_slice) x w)."""
    n_components = weights.shape[1]
    conjugated = _conjugate_where(grad_slices, geometry.flipped)
    grad_rows = weights.new_empty(len(geometry.touched_rows), 2, n_components)
    half = (n_components + 1) // 2
    for part in (slice(0, half), slice(half, n_components))[:n_components]:  # in halves: half the memory, and
        # measured faster (one component: one part)
        per_point = conjugated[..., None] * weights[:, None, None, part]  # B x P x (re, im) x components
        width = per_point.shape[-1]
        grad_rows[:, :, part] = (geometry.interpolation_t @ per_point.reshape(-1, 2 * width)).view(-1, 2, width)
    return grad_rows.view(-1, 2 * n_components)


def project(basis: torch.Tensor, weights: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """Slices (B x P x 2, (re, im)) of the basis weighted by `weights` (B x K+1) at `geometry`."""
    return _SparseSlice.apply(basis, weights, geometry)


@dataclasses.dataclass
class SliceFactors:
    """A batch's basis gradient, unsummed: poses (B x 3 x 3), basis weights (B x K+1), slice geometry and,
    once backward has run, the gradient of the loss with respect to each slice (B x P x 2)."""
    rotations: torch.Tensor
    weights: torch.Tensor
    geometry: SliceGeometry
    grad_slices: torch.Tensor | None = None

    def _capture(self, grad):
        self.grad_slices = grad

    def basis_gradient(self) -> torch.Tensor:
        return basis_gradient(self.geometry, self.grad_slices, self.weights)

    # What distributed.sparse_reducer asks of a batch's factors (its GradientFactors): sizes, and the factors
    # packed into one tensor to send, from which a process holding the same grids rebuilds the gradient.
    @property
    def n_rows(self) -> int:
        return self.geometry.n_rows

    @property
    def touched_rows(self) -> torch.Tensor:
        return self.geometry.touched_rows

    @property
    def n_images(self) -> int:
        return self.weights.shape[0]

    @property
    def n_components(self) -> int:
        return self.weights.shape[1]

    @property
    def value_bytes(self) -> int:
        return self.weights.element_size()

    @property
    def packed_width(self) -> int:
        return factor_columns(self.n_components, len(self.geometry.points_2d))

    def pack(self) -> torch.Tensor:
        """B x packed_width numbers in the weights' dtype: each image's pose (9), its basis rows' offset, its
        basis weights and its slice gradient (after backward)."""
        n_images = self.n_images
        offsets = self.geometry.row_offsets if self.geometry.row_offsets is not None else torch.zeros(n_images)
        # a half-set's row offset (below 2^24) is exact in float32
        return torch.cat([self.rotations.reshape(n_images, 9).to(self.weights.dtype),
                          offsets.to(self.weights)[:, None], self.weights, self.grad_slices.reshape(n_images, -1)],
                         dim=1)

    def gradient_of_packed(self, packed: torch.Tensor) -> torch.Tensor:
        """The basis gradient (as basis_gradient() gives it) of a batch whose factors pack() gave as `packed`
        (B' x packed_width), rebuilt on this batch's grids; the same bits as that batch's own."""
        n_components, geometry = self.n_components, self.geometry
        rotations = packed[:, :9].reshape(-1, 3, 3).to(self.rotations.dtype).contiguous()
        offsets = packed[:, 9].round().int()
        weights = packed[:, 10:10 + n_components].contiguous()
        grads = packed[:, 10 + n_components:].reshape(len(packed), -1, 2).contiguous()
        rebuilt = slice_geometry(rotations, geometry.points_2d, geometry.half_ball, offsets,
                                 geometry.n_rows // geometry.half_ball.n_voxels)
        return basis_gradient(rebuilt, grads, weights)


def factor_columns(n_components: int, n_points: int) -> int:
    """The numbers SliceFactors.pack gives an image of n_points slice points and n_components basis weights."""
    return 10 + n_components + 2 * n_points


def project_with_factors(basis: torch.Tensor, weights: torch.Tensor, geometry: SliceGeometry,
                         rotations: torch.Tensor) -> tuple[torch.Tensor, SliceFactors]:
    """Slices as project() gives them, but autograd leaves the basis alone: its gradient is built by the
    caller from the returned SliceFactors (whose grad_slices backward fills in), e.g. after all-gathering
    the factors of several ranks, which is much cheaper than reducing the gradient itself."""
    factors = SliceFactors(rotations, weights.detach(), geometry)
    slices = project(basis.detach(), weights, geometry)
    slices.register_hook(factors._capture)
    return slices, factors
