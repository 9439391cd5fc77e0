"""The compiled CPU loops (physics.compiled, slice_kernels.c) against PyTorch's path, which the other projector
tests hold against dense autograd and finite differences; and what happens without a compiler."""

import tempfile
import warnings

import numpy as np
import pytest
import torch

from conftest import run_cli

from hetrec_dist.errors import PerformanceWarning
from hetrec_dist.physics import compiled
from hetrec_dist.physics.fourier_grid import HalfBall, HalfDisk
from hetrec_dist.physics.projector import basis_gradient, project, slice_geometry
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.train.row_adam import RowSparseAdam


@pytest.fixture
def kernels():
    found = compiled.kernels_for(torch.zeros(1))
    if found is None:
        pytest.skip("no C compiler: the compiled loops are unavailable here")
    return found


def batch(n_images=37, box=32, n_components=17, n_stacked=1, seed=0):
    """float32 basis, weights, poses, slice gradients and half-set row offsets of a random batch."""
    generator = torch.Generator().manual_seed(seed)
    half_ball, disk = HalfBall.build(box / 2 - 1), HalfDisk.build(box, box / 2 - 1)
    angles = random_relion_euler(n_images, np.random.default_rng(seed))
    rotations = torch.from_numpy(matrices_from_relion_euler(*angles))
    basis = torch.randn(n_stacked * half_ball.n_voxels, 2 * n_components, generator=generator)
    weights = torch.randn(n_images, n_components, generator=generator)
    grad_slices = torch.randn(n_images, disk.coords.shape[0], 2, generator=generator)
    offsets = (torch.arange(n_images) % n_stacked) * half_ball.n_voxels if n_stacked > 1 else None
    return half_ball, disk, rotations.float(), basis, weights, grad_slices, offsets


def both_paths(monkeypatch, compute):
    """compute() on the compiled loops, then on PyTorch's operations."""
    compiled_result = compute()
    monkeypatch.setenv("HETREC_COMPILED_KERNELS", "0")
    pytorch_result = compute()
    monkeypatch.delenv("HETREC_COMPILED_KERNELS")
    return compiled_result, pytorch_result


@pytest.mark.parametrize("n_stacked", [1, 2])
def test_the_compiled_loops_give_pytorchs_geometry_slices_and_gradients(kernels, monkeypatch, n_stacked):
    half_ball, disk, rotations, basis, weights, grad_slices, offsets = batch(n_stacked=n_stacked)

    def compute():
        geometry = slice_geometry(rotations, disk.coords, half_ball, offsets, n_stacked)
        leaf_basis, leaf_weights = basis.clone().requires_grad_(), weights.clone().requires_grad_()
        slices = project(leaf_basis, leaf_weights, geometry)
        (slices * grad_slices).sum().backward()
        return geometry, slices.detach(), leaf_weights.grad, leaf_basis.grad.coalesce()

    (ours, slices, grad_weights, grad_basis), (theirs, *expected) = both_paths(monkeypatch, compute)
    assert ours.image_rows is not None and theirs.image_rows is None
    for name in ("rows", "trilinear", "flipped", "fractions", "touched_rows", "column_of_row"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(slices, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_weights, expected[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_basis.indices(), expected[2].indices(), rtol=0, atol=0)
    torch.testing.assert_close(grad_basis.values(), expected[2].values(), rtol=1e-5, atol=1e-5)
    # the interpolation (pose refinement's path) with other corner weights
    corner_weights = torch.rand_like(ours.trilinear)
    torch.testing.assert_close(ours.interpolate(basis, corner_weights), theirs.interpolate(basis, corner_weights),
                               rtol=1e-5, atol=1e-5)


def test_each_images_row_list_holds_its_distinct_rows_once(kernels):
    half_ball, disk, rotations, *_ = batch(n_images=5)
    geometry = slice_geometry(rotations, disk.coords, half_ball)
    listed = geometry.image_rows
    for image in range(5):
        own = listed.rows[image, :listed.counts[image]]
        assert len(own.unique()) == len(own) == len(geometry.rows[image].unique())
        assert torch.equal(own[listed.slots[image].long()], geometry.rows[image])
    assert torch.equal(listed.starts, torch.cumsum(listed.counts, 0) - listed.counts)


def test_the_compiled_results_do_not_depend_on_the_number_of_threads(kernels):
    half_ball, disk, rotations, basis, weights, grad_slices, _ = batch(n_images=40)
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 3):
            torch.set_num_threads(n_threads)
            geometry = slice_geometry(rotations, disk.coords, half_ball)
            results.append((project(basis, weights, geometry),
                            basis_gradient(geometry, grad_slices, weights).values()))
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(*results):
        assert torch.equal(one, three)


@pytest.mark.parametrize("compiled_loop", [True, False])
def test_row_adam_takes_sparse_adams_steps_on_either_path(monkeypatch, compiled_loop):
    """Bit for bit on PyTorch's path. The compiled loop's moments are SparseAdam's bit for bit too; its square
    root is correctly rounded, PyTorch's float32 one not always (some values differ in the last bit), so its
    parameters agree to a few units in the last place."""
    if not compiled_loop:
        monkeypatch.setenv("HETREC_COMPILED_KERNELS", "0")
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(300, 34, generator=generator)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    row_adam, sparse_adam = RowSparseAdam([ours], lr=3e-3), torch.optim.SparseAdam([theirs], lr=3e-3)
    for step in range(4):
        rows = torch.randperm(300, generator=generator)[:120 + 20 * step].sort().values
        values = torch.randn(len(rows), 34, generator=generator)
        for parameter, optimizer in ((ours, row_adam), (theirs, sparse_adam)):
            parameter.grad = torch.sparse_coo_tensor(rows[None], values, start.shape,
                                                     check_invariants=True).coalesce()
            optimizer.step()
        if compiled_loop:
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(ours, theirs)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(row_adam.state[ours][key], sparse_adam.state[theirs][key])


@pytest.fixture
def no_library():
    """physics.compiled as in a fresh process: nothing loaded yet (and again after the test)."""
    compiled._kernels.cache_clear()
    yield
    compiled._kernels.cache_clear()


@pytest.mark.parametrize("compiler", ["/nonexistent/cc", "false"])
def test_without_a_working_compiler_the_projector_warns_once_and_takes_pytorchs_path(
        no_library, monkeypatch, tmp_path, compiler):
    monkeypatch.setenv("CC", compiler)
    monkeypatch.setenv("HETREC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the second place a build is looked for
    half_ball, disk, rotations, basis, weights, _, _ = batch(n_images=3)
    with pytest.warns(PerformanceWarning, match="compiled kernels are unavailable"):
        assert compiled.kernels_for(basis) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        geometry = slice_geometry(rotations, disk.coords, half_ball)  # no second warning
    assert geometry.image_rows is None
    monkeypatch.setenv("HETREC_COMPILED_KERNELS", "0")
    expected = project(basis, weights, slice_geometry(rotations, disk.coords, half_ball))
    torch.testing.assert_close(project(basis, weights, geometry), expected, rtol=0, atol=0)


def test_the_cli_says_in_one_line_that_it_trains_without_the_compiled_kernels(no_library, sim_store, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    result = run_cli("train", sim_store, "-o", str(tmp_path / "run"), "--epochs", "1", "-q")
    lines = [line for line in result.stderr.splitlines() if "compiled kernels" in line]
    assert lines == ["Warning: the projector's compiled kernels are unavailable (no C compiler (/nonexistent/cc) "
                     "on the PATH): using PyTorch's operations, the same values, slower on the CPU"], result.stderr
