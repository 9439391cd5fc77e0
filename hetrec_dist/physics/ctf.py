"""The contrast transfer function, with RELION's definition and sign.

Parameters follow RELION (and the columns of the store's `ctf` array, which are cryoDRGN's ctf.pkl
columns): defocus U/V in Angstrom (positive = underfocus), astigmatism angle in degrees from the x axis,
voltage in kV, spherical aberration Cs in mm, amplitude contrast w, phase shift in degrees.

    CTF(s) = -sin(chi),  chi = -pi*lambda*df(a)*s^2 + pi/2*Cs*lambda^3*s^4 - phase_shift - atan(w/sqrt(1-w^2))

with df(a) = (U+V)/2 + (U-V)/2 * cos(2(a - angle)), a the direction of the spatial frequency s (1/A).
The CTF is positive at low frequency, so a particle of positive density stays white after the CTF.

RELION's envelope multiplies it (rlnCtfScalefactor and rlnCtfBfactor, written by CtfRefine and Warp/M):

    CTF(s) * scale * exp(-B s^2 / 4)

(RELION's CTF::initialise sets K4 = -Bfac / 4 and CTF::getCTF multiplies by scale * exp(K4 u^2), u in 1/A).
The store keeps (scale, B in A^2) per particle in its `ctf_envelope` array (docs/store_format.md).
"""

from typing import TYPE_CHECKING, TypeAlias

import numpy as np

if TYPE_CHECKING:
    import torch

# A scalar, a numpy array or a torch tensor (ctf_2d works on either kind of array).
_ArrayOrScalar: TypeAlias = "float | np.ndarray | torch.Tensor"

# Columns of the store's ctf array (cryoDRGN's ctf.pkl layout).
CTF_COLUMNS = ("box", "pixel_size_A", "defocus_u_A", "defocus_v_A", "defocus_angle_deg",
               "voltage_kv", "cs_mm", "amplitude_contrast", "phase_shift_deg")


def _array_module(x):
    """numpy for arrays and numbers, torch for tensors (imported only when a tensor is passed)."""
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return np
    import torch

    return torch


def electron_wavelength_A(voltage_kv: _ArrayOrScalar) -> _ArrayOrScalar:
    """Relativistic electron wavelength in Angstrom."""
    volts = voltage_kv * 1e3
    return 12.2642598 / (volts * (1.0 + volts * 0.978466e-6)) ** 0.5


def ctf_2d(freq_x: _ArrayOrScalar, freq_y: _ArrayOrScalar, defocus_u_A: _ArrayOrScalar,
           defocus_v_A: _ArrayOrScalar, defocus_angle_deg: _ArrayOrScalar, voltage_kv: _ArrayOrScalar,
           cs_mm: _ArrayOrScalar, amplitude_contrast: _ArrayOrScalar,
           phase_shift_deg: _ArrayOrScalar = 0.0, scale: "_ArrayOrScalar | None" = None,
           bfactor_A2: "_ArrayOrScalar | None" = None) -> _ArrayOrScalar:
    """CTF at spatial frequencies (freq_x, freq_y) in 1/A; with scale and bfactor_A2 (B in A^2) given, times
    RELION's envelope scale * exp(-B s^2 / 4) (module doc). Parameters broadcast against the grid. Works on
    numpy arrays and on torch tensors (all arguments of one kind)."""
    xp = _array_module(freq_x)
    chi = _phase(xp, freq_x, freq_y, defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kv, cs_mm,
                 amplitude_contrast, phase_shift_deg)
    return -xp.sin(chi) * _envelope(xp, freq_x, freq_y, scale, bfactor_A2)


def _phase(xp, freq_x, freq_y, defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast,
           phase_shift_deg):
    """chi of the module doc."""
    wavelength = electron_wavelength_A(voltage_kv)
    s2 = freq_x ** 2 + freq_y ** 2
    direction = xp.arctan2(freq_y, freq_x)
    defocus = 0.5 * (defocus_u_A + defocus_v_A) + 0.5 * (defocus_u_A - defocus_v_A) * xp.cos(
        2.0 * (direction - defocus_angle_deg * (np.pi / 180)))
    w = amplitude_contrast
    return (-np.pi * wavelength * defocus * s2 + 0.5 * np.pi * cs_mm * 1e7 * wavelength ** 3 * s2 ** 2
            - phase_shift_deg * (np.pi / 180) - xp.arctan(w / (1.0 - w ** 2) ** 0.5))


def _envelope(xp, freq_x, freq_y, scale, bfactor_A2):
    """RELION's envelope scale * exp(-B s^2 / 4); 1 where neither is given."""
    if scale is None and bfactor_A2 is None:
        return 1.0
    scale = 1.0 if scale is None else scale
    bfactor_A2 = 0.0 if bfactor_A2 is None else bfactor_A2
    return scale * xp.exp(-0.25 * bfactor_A2 * (freq_x ** 2 + freq_y ** 2))


def _particle_arguments(ctf, points_2d, box, pixel_size_A, envelope):
    """ctf_2d's arguments for each particle (B rows) at the integer Fourier points (P x 2, (kx, ky)): the points'
    frequencies (P each, 1/A), the 7 CTF parameters (B x 1 each), the envelope's scale and B (B x 1, or None)."""
    frequency = points_2d.to(ctf.dtype) / (box * pixel_size_A)
    parameters = [ctf[:, i, None] for i in range(2, 9)]
    scale, bfactor_A2 = (None, None) if envelope is None else (envelope[:, 0, None].to(ctf.dtype),
                                                               envelope[:, 1, None].to(ctf.dtype))
    return frequency[:, 0], frequency[:, 1], parameters, scale, bfactor_A2


def particle_ctfs(ctf: "torch.Tensor", points_2d: "torch.Tensor", box: int, pixel_size_A: float,
                  envelope: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Each particle's CTF (B x P) at the integer Fourier points (P x 2, (kx, ky)) of a box-D image: ctf is the
    store's ctf array (B x 9, CTF_COLUMNS), envelope its ctf_envelope (B x 2: scale, B in A^2) or None."""
    freq_x, freq_y, parameters, scale, bfactor_A2 = _particle_arguments(ctf, points_2d, box, pixel_size_A, envelope)
    return ctf_2d(freq_x, freq_y, *parameters, scale, bfactor_A2)


def particle_defocus_jacobians(ctf: "torch.Tensor", points_2d: "torch.Tensor", box: int, pixel_size_A: float,
                               envelope: "torch.Tensor | None" = None, astigmatism: bool = False) -> "torch.Tensor":
    """dCTF/dδ (B x P x n) at the points of particle_ctfs, for a change δ (Å) of each particle's defocus: its
    mean (n = 1), and with astigmatism also the components (c, s) of its astigmatism (n = 3), so that the
    defocus along direction a becomes df(a) + δ_0 + δ_1 cos 2a + δ_2 sin 2a (linear in δ; U, V and the angle
    of a corrected defocus: corrected_defocus). From the module doc's chi:
        dCTF/d df = -cos(chi) dchi/d df * envelope = pi lambda s^2 cos(chi) * envelope."""
    import torch

    freq_x, freq_y, parameters, scale, bfactor_A2 = _particle_arguments(ctf, points_2d, box, pixel_size_A, envelope)
    chi = _phase(torch, freq_x, freq_y, *parameters)
    along_defocus = (torch.pi * electron_wavelength_A(ctf[:, 5, None]) * (freq_x ** 2 + freq_y ** 2)
                     * torch.cos(chi) * _envelope(torch, freq_x, freq_y, scale, bfactor_A2))
    if not astigmatism:
        return along_defocus[..., None]
    direction = torch.atan2(freq_y, freq_x)
    return along_defocus[..., None] * torch.stack([torch.ones_like(direction), torch.cos(2 * direction),
                                                   torch.sin(2 * direction)], -1)


def corrected_defocus(defocus_u_A: np.ndarray, defocus_v_A: np.ndarray, defocus_angle_deg: np.ndarray,
                      correction_A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, V, angle in degrees) of a defocus after the change δ (... x 3, Å: mean, astigmatism's cos 2a and
    sin 2a components; particle_defocus_jacobians), with U >= V and the angle in [0, 180) as RELION writes them.
    numpy arrays."""
    correction_A = np.asarray(correction_A, np.float64)
    mean = 0.5 * (defocus_u_A + defocus_v_A) + correction_A[..., 0]
    half_difference = 0.5 * (np.asarray(defocus_u_A, np.float64) - defocus_v_A)
    angle = np.radians(defocus_angle_deg)
    astigmatism_c = half_difference * np.cos(2 * angle) + correction_A[..., 1]
    astigmatism_s = half_difference * np.sin(2 * angle) + correction_A[..., 2]
    magnitude = np.hypot(astigmatism_c, astigmatism_s)
    angle_deg = np.degrees(0.5 * np.arctan2(astigmatism_s, astigmatism_c)) % 180.0
    return mean + magnitude, mean - magnitude, angle_deg
