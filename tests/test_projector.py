import numpy as np
import pytest
import torch

from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.maps import SupportProjector, half_ball_to_map, map_to_half_ball
from hetrec_dist.physics.projector import _conjugate_where, project, slice_geometry
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.render import project_atoms, render_map


def project_dense_reference(basis, weights, geometry):
    """The projector's slices by plain autograd-differentiable gathering (its gradient is dense)."""
    n_components = weights.shape[1]
    gathered = basis[geometry.rows.long()].view(*geometry.rows.shape, 2, n_components)
    values = (gathered * weights[:, None, None, None, :]).sum(-1)
    return _conjugate_where((values * geometry.trilinear[..., None]).sum(2), geometry.flipped)


def random_batch(n_images, box, n_components, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
    angles = random_relion_euler(n_images, np.random.default_rng(seed))
    rotations = torch.from_numpy(matrices_from_relion_euler(*angles))
    basis = torch.randn(half_ball.n_voxels, 2 * n_components, generator=generator, dtype=dtype)
    weights = torch.randn(n_images, n_components, generator=generator, dtype=dtype)
    geometry = slice_geometry(rotations.to(dtype), disk.coords, half_ball)
    return basis, weights, geometry


def test_sparse_gradient_equals_dense_autograd_gradient():
    basis, weights, geometry = random_batch(n_images=40, box=16, n_components=5)  # > one pass of 32 images
    upstream = torch.randn(40, geometry.rows.shape[1], 2, dtype=torch.float64)
    grads = []
    for fn in (project, project_dense_reference):
        b, w = basis.clone().requires_grad_(), weights.clone().requires_grad_()
        out = fn(b, w, geometry)
        (out * upstream).sum().backward()
        grads.append((out.detach(), b.grad, w.grad))
    (out_sparse, grad_b_sparse, grad_w_sparse), (out_dense, grad_b_dense, grad_w_dense) = grads
    torch.testing.assert_close(out_sparse, out_dense)
    assert grad_b_sparse.is_sparse and grad_b_sparse._nnz() == grad_b_sparse.coalesce()._nnz()  # no duplicates
    leaf = basis.clone().requires_grad_()
    direct, = torch.autograd.grad(project(leaf, weights, geometry).sum(), leaf)
    assert direct.is_coalesced()  # as the projector returns it (accumulation into .grad drops the flag)
    torch.testing.assert_close(grad_b_sparse.to_dense(), grad_b_dense)
    torch.testing.assert_close(grad_w_sparse, grad_w_dense)
    # the touched set is exactly the voxels the slices read
    assert set(grad_b_sparse.coalesce().indices()[0].tolist()) == set(geometry.rows.reshape(-1).tolist())
    assert grad_b_sparse._nnz() < basis.shape[0]


def test_gradients_match_finite_differences_in_float64():
    basis, weights, geometry = random_batch(n_images=2, box=8, n_components=3, seed=1)
    assert torch.autograd.gradcheck(lambda w: project(basis, w, geometry), (weights.requires_grad_(),))
    upstream = torch.randn(2, geometry.rows.shape[1], 2, dtype=torch.float64)
    loss = lambda b: (project(b, weights.detach(), geometry) * upstream).sum()
    leaf = basis.clone().requires_grad_()
    analytic = torch.autograd.grad(loss(leaf), leaf)[0].to_dense()
    touched = geometry.rows.reshape(-1).unique()
    for row in touched[torch.randperm(len(touched), generator=torch.Generator().manual_seed(0))[:10]]:
        for column in (0, 4):
            step = torch.zeros_like(basis)
            step[row, column] = 1e-6
            numeric = (loss(basis + step) - loss(basis - step)) / 2e-6
            assert abs(numeric - analytic[row, column]) < 1e-6 * max(1.0, abs(numeric))


def test_trilinear_neighbours_all_exist_within_the_radius():
    for box in (16, 33, 64):
        _, _, geometry = random_batch(n_images=64, box=box, n_components=1, seed=box)
        assert (geometry.rows >= 0).all()
        torch.testing.assert_close(geometry.trilinear.sum(-1), torch.ones_like(geometry.trilinear[..., 0]))


def test_a_map_survives_the_round_trip_through_the_half_ball():
    box = 32
    model = hinge_model()
    volume = torch.from_numpy(render_map(model.start, model.weights, model.sigma_A, box, 2.0))
    half_ball = HalfBall.build(box / 2 - 1)
    restored = half_ball_to_map(map_to_half_ball(volume, half_ball, 2.0), half_ball, box, 2.0)
    # only frequencies beyond the ball are lost; the Gaussian atoms have next to nothing there
    assert (restored - volume).abs().max() < 0.02 * volume.abs().max()


def blob(box, centre_px, sigma_px=1.2):
    grid = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    squared = (x - centre_px[0]) ** 2 + (y - centre_px[1]) ** 2 + (z - centre_px[2]) ** 2
    return torch.exp(-squared / (2 * sigma_px ** 2))


def test_support_projection_keeps_density_inside_the_sphere_and_removes_it_outside():
    """Two blobs, 3 and 14 px from the centre, loaded into the basis: confined to a sphere of radius 8 px
    (soft edge to 9.6 px), the map of the first is unchanged and the second is gone; to 20 px, both stay."""
    box = 32
    half_ball = HalfBall.build(box / 2 - 1)
    near, far = blob(box, (2, -1, 2)), blob(box, (8, 8, -8))
    coefficients = torch.stack([map_to_half_ball(v, half_ball, 1.0) for v in (near, far)], dim=1)

    def confined_maps(radius_px):
        confined = SupportProjector(half_ball, box, 1.0, radius_px, edge_px=1.6)(coefficients)
        return [half_ball_to_map(confined[:, i], half_ball, box, 1.0) for i in (0, 1)]

    kept, removed = confined_maps(8.0)
    assert (kept - near).abs().max() < 0.01 and removed.abs().max() < 0.01
    assert all((m - v).abs().max() < 0.01 for m, v in zip(confined_maps(20.0), (near, far)))


@pytest.mark.parametrize("flip", [False, True])
def test_projection_of_a_loaded_map_matches_its_real_space_projection(flip):
    """Fourier slice of the basis vs. the simulator's real-space projection of the same atoms; a mirrored
    map (flip) must not match, so the test sees handedness."""
    box, apix = 48, 3.0
    model = hinge_model()
    positions = model.positions([0.3])
    volume = torch.from_numpy(render_map(positions[0], model.weights, model.sigma_A, box, apix))
    if flip:
        volume = volume.flip(0)
    half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
    basis = torch.view_as_real(map_to_half_ball(volume, half_ball, apix)).T.reshape(2, -1).T.contiguous()
    rotations = matrices_from_relion_euler(*random_relion_euler(6, np.random.default_rng(4)))
    images = project_atoms(np.repeat(positions, 6, 0), model.weights, model.sigma_A, rotations, np.zeros((6, 2)),
                           box, apix)
    expected = disk.take(torch.fft.rfft2(torch.fft.ifftshift(torch.from_numpy(images), dim=(-2, -1)), norm="ortho"))
    geometry = slice_geometry(torch.from_numpy(rotations), disk.coords, half_ball)
    slices = torch.view_as_complex(project(basis, torch.ones(6, 1, dtype=torch.float64), geometry).contiguous())
    error = (slices - expected).abs().pow(2).sum() / expected.abs().pow(2).sum()
    if flip:
        assert error > 0.1
    else:
        assert error < 0.02, error


@pytest.mark.parametrize("n_stacked", [1, 2])
def test_the_interpolations_transpose_is_its_dense_transpose(n_stacked):
    """T^T (built by sorting T's entries by column) against the dense transpose of T, with the half-sets'
    stacked rows too."""
    half_ball, disk = HalfBall.build(16 / 2 - 1), HalfDisk.build(16, 16 / 2 - 1)
    rotations = torch.from_numpy(matrices_from_relion_euler(*random_relion_euler(12, np.random.default_rng(4))))
    offsets = (torch.arange(12) % n_stacked) * half_ball.n_voxels
    geometry = slice_geometry(rotations.float(), disk.coords, half_ball, offsets, n_stacked)
    transpose = geometry.interpolation_t
    assert transpose.crow_indices()[-1] == 8 * 12 * disk.coords.shape[0]  # every entry once
    torch.testing.assert_close(transpose.to_dense(), geometry.interpolation.to_dense().T, rtol=0, atol=0)
