"""Fourier-space helpers for images. Convention: image arrays are [row = y, column = x] with the origin at
pixel D // 2 (the FFT centre after fftshift)."""

import numpy as np


def frequency_grid_2d(box: int, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (fx, fy) in 1/A of the full, fftshift-ed D x D grid, each D x D."""
    freqs = np.fft.fftshift(np.fft.fftfreq(box, d=pixel_size_A))
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    return fx, fy


def fourier_crop(images: np.ndarray, new_box: int) -> np.ndarray:
    """Downsample images (..., D, D) to (..., new_box, new_box) by cropping their Fourier transform.

    The spectrum is taken about pixel D // 2 (the particle centre of this project's convention, and of
    cryoDRGN's `downsample`), so that pixel D // 2 of the input and new_box // 2 of the output are one point:
    D may be odd, new_box must be even. Pixel values keep their scale (they stay samples of the same
    band-limited function), and the pixel size grows by D / new_box.
    """
    box = images.shape[-1]
    if new_box == box:
        return images
    if new_box > box or new_box % 2:
        raise ValueError(f"cannot Fourier-crop a box of {box} to {new_box}")
    spectrum = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    half = new_box // 2
    cropped = np.concatenate([spectrum[..., :half, :half + 1], spectrum[..., -half:, :half + 1]], axis=-2)
    return np.fft.fftshift(np.fft.irfft2(cropped, s=(new_box, new_box)), axes=(-2, -1)) * (new_box / box) ** 2
