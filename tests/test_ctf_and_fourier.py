import numpy as np

from hetrec_dist.physics.ctf import ctf_2d, electron_wavelength_A
from hetrec_dist.physics.fourier import fourier_crop
from hetrec_dist.simulate.render import project_atoms


def test_wavelength_at_300kv():
    assert abs(electron_wavelength_A(300.0) - 0.019687) < 1e-6


def test_ctf_matches_the_cryodrgn_formula_with_opposite_sign():
    """cryoDRGN's CTF is the negative of RELION's; written independently here."""
    rng = np.random.default_rng(0)
    fx, fy = rng.uniform(-0.25, 0.25, (2, 500))
    du, dv, angle, kv, cs, w, phase = 15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1, 20.0
    lam = 12.2642598 / np.sqrt(kv * 1e3 * (1 + kv * 1e3 * 0.978466e-6))
    a = np.arctan2(fy, fx)
    s2 = fx ** 2 + fy ** 2
    df = 0.5 * (du + dv + (du - dv) * np.cos(2 * (a - np.radians(angle))))
    gamma = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs * 1e7 * lam ** 3 * s2 ** 2) - np.radians(phase)
    cryodrgn = np.sqrt(1 - w ** 2) * np.sin(gamma) - w * np.cos(gamma)
    np.testing.assert_allclose(ctf_2d(fx, fy, du, dv, angle, kv, cs, w, phase), -cryodrgn, atol=1e-12)


def test_ctf_first_zero_and_sign():
    lam, df = electron_wavelength_A(300.0), 20000.0
    first_zero = 1 / np.sqrt(lam * df)  # sin(pi lam df s^2) = 0 with Cs = 0, w = 0
    values = ctf_2d(np.array([0.3, 0.999, 1.001]) * first_zero, 0.0, df, df, 0.0, 300.0, 0.0, 0.0)
    assert values[0] > 0 and values[1] > 0 > values[2]
    assert ctf_2d(0.0, 0.0, df, df, 0.0, 300.0, 2.7, 0.1) > 0  # amplitude contrast keeps low frequencies white


def test_fourier_crop_equals_rendering_at_the_coarser_pixel_size():
    rng = np.random.default_rng(1)
    atoms = rng.normal(size=(1, 12, 3)) * 10
    kwargs = dict(weights=np.ones(12), sigma_A=4.0, rotations=np.eye(3)[None], shifts_px=np.zeros((1, 2)))
    fine = project_atoms(atoms, box=128, pixel_size_A=1.0, **kwargs)
    coarse = project_atoms(atoms, box=64, pixel_size_A=2.0, **kwargs)
    cropped = fourier_crop(fine, 64)
    np.testing.assert_allclose(cropped, coarse, atol=1e-6 * np.abs(coarse).max())


def test_fourier_cropping_a_map_equals_rendering_it_at_the_coarser_voxel_size():
    from hetrec_dist.simulate.render import render_map

    rng = np.random.default_rng(3)
    atoms = rng.normal(size=(10, 3)) * 2  # well inside the box: the FFT takes the map as periodic
    fine = render_map(atoms, np.ones(10), 3.0, box=64, pixel_size_A=1.0)
    coarse = render_map(atoms, np.ones(10), 3.0, box=32, pixel_size_A=2.0)
    np.testing.assert_allclose(fourier_crop(fine, 32, ndim=3), coarse, atol=1e-4 * np.abs(coarse).max())
