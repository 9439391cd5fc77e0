"""Fourier-space helpers for images. Convention: image arrays are [row = y, column = x] with the origin at
pixel D // 2 (the FFT centre after fftshift)."""

import numpy as np


def frequency_grid_2d(box: int, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (fx, fy) in 1/A of the full, fftshift-ed D x D grid, each D x D."""
    freqs = np.fft.fftshift(np.fft.fftfreq(box, d=pixel_size_A))
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    return fx, fy


def fourier_crop(array: np.ndarray, new_box: int, ndim: int = 2) -> np.ndarray:
    """Downsample images (..., D, D), or with ndim=3 maps (..., D, D, D), to a box of new_box by cropping
    their Fourier transform.

    The spectrum is taken about voxel D // 2 (the particle centre of this project's convention, and of
    cryoDRGN's `downsample`), so that voxel D // 2 of the input and new_box // 2 of the output are one point:
    D may be odd, new_box must be even. Values keep their scale (they stay samples of the same band-limited
    function), and the pixel size grows by D / new_box.
    """
    box = array.shape[-1]
    if new_box == box:
        return array
    if new_box > box or new_box % 2:
        raise ValueError(f"cannot Fourier-crop a box of {box} to {new_box}")
    axes = tuple(range(-ndim, 0))
    spectrum = np.fft.rfftn(np.fft.ifftshift(array, axes=axes), axes=axes)
    half = new_box // 2
    for axis in axes[:-1]:  # keep frequencies -half .. half - 1 of each full axis
        spectrum = np.concatenate([np.take(spectrum, np.arange(half), axis=axis),
                                   np.take(spectrum, np.arange(-half, 0), axis=axis)], axis=axis)
    cropped = np.fft.irfftn(spectrum[..., :half + 1], s=(new_box,) * ndim, axes=axes)
    return np.fft.fftshift(cropped, axes=axes) * (new_box / box) ** ndim
