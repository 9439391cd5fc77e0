"""The particles' contrast: measured from the images, decided once at conversion, and stored white.

The store holds particles white: protein is brighter than the solvent once the CTF's sign is undone, which is
RELION's convention (its extraction inverts the micrograph's contrast) and the one hetrec's CTF assumes
(physics.ctf: positive at low frequency). Which contrast an input's images have is not written reliably in
any format (docs/inputs.md): RELION and cryoDRGN mark nothing, and cryoSPARC's blob/sign is -1 on its own
extracted particles and on particles it imported alike (docs/inputs.md#contrast). So it is measured:

    v_i = (mean of the disc - mean of the ring) / std of the ring

on each of a sample of particles, after the image is centred by its shift, multiplied by the sign of its CTF
(phase flipping: every frequency then carries the projection with a positive weight) and low-passed to
30 A. The disc (radius 0.15 D) lies inside nearly every particle, the ring (radii 0.40 D to 0.48 D) mostly
in the solvent around it. Over the sample, z = mean(v) / (std(v) / sqrt(n)) is the evidence: z >= +5 says
white, z <= -5 dark; in between the images do not tell (few particles, a very low SNR, or a particle that
fills the box).
"""

import dataclasses

import numpy as np

from hetrec_dist.errors import UserError, warn_input
from hetrec_dist.physics.ctf import ctf_2d
from hetrec_dist.physics.fourier import fourier_crop, frequency_grid_2d

SAMPLE_PARTICLES = 1000
CONCLUSIVE_Z = 5.0
LOW_PASS_A = 30.0
DISC_RADIUS, RING_RADII = 0.15, (0.40, 0.48)  # fractions of the box
MEASURE_BOX, BATCH = 128, 64


@dataclasses.dataclass
class ContrastMeasurement:
    """z: the evidence (above); n: particles measured; per_particle: v_i (the module doc)."""
    z: float
    n: int
    per_particle: np.ndarray

    @property
    def measured(self):
        """'white' or 'dark' where |z| >= CONCLUSIVE_Z, else None."""
        if not abs(self.z) >= CONCLUSIVE_Z:
            return None
        return "white" if self.z > 0 else "dark"

    def describe(self):
        return f"z = {self.z:+.1f} over {self.n} particles"


def _sample_rows(n, sample):
    return np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64))


def contrast_scores(images, shifts_px, ctf, pixel_size_A):
    """v_i of the module doc for images (n, D, D) [row y, column x] with shifts_px (n, 2) as the store keeps
    them (x, y; translating by +shift centres the particle) and ctf (n, 9) in physics.ctf.CTF_COLUMNS.
    Boxes above MEASURE_BOX are Fourier-cropped to it first (30 A needs no finer pixels)."""
    if images.shape[-1] > MEASURE_BOX:
        scale = MEASURE_BOX / images.shape[-1]
        images, shifts_px, pixel_size_A = fourier_crop(images, MEASURE_BOX), shifts_px * scale, pixel_size_A / scale
    box = images.shape[-1]
    fx, fy = frequency_grid_2d(box, pixel_size_A)
    k = np.fft.fftshift(np.fft.fftfreq(box)) * box  # cycles per box, as the model's shift phase uses
    ky, kx = np.meshgrid(k, k, indexing="ij")
    low_pass = np.exp(-(fx ** 2 + fy ** 2) * max(LOW_PASS_A, 4 * pixel_size_A) ** 2)
    y, x = np.mgrid[:box, :box] - box // 2
    radius = np.hypot(x, y) / box
    disc, ring = radius < DISC_RADIUS, (radius >= RING_RADII[0]) & (radius < RING_RADII[1])
    spectra = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))), axes=(-2, -1))
    phases = np.exp(-2j * np.pi * (shifts_px[:, 0, None, None] * kx + shifts_px[:, 1, None, None] * ky) / box)
    flips = np.sign(ctf_2d(fx, fy, *(ctf[:, c, None, None] for c in range(2, 9))))
    filtered = np.real(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectra * phases * flips * low_pass,
                                                                     axes=(-2, -1))), axes=(-2, -1)))
    spread = filtered[:, ring].std(axis=1)
    contrast = filtered[:, disc].mean(axis=1) - filtered[:, ring].mean(axis=1)
    return np.divide(contrast, spread, out=np.zeros_like(contrast), where=spread > 0)


def measure_contrast(table, read_images, sample=SAMPLE_PARTICLES):
    """ContrastMeasurement of up to `sample` evenly spaced particles of a ParticleTable; read_images(rows): the
    images of those table rows (n, D, D), as the conversion reads them (a UserError for NaN pixels)."""
    rows = _sample_rows(len(table), sample)
    scores = np.concatenate([
        contrast_scores(read_images(batch), table.shifts_px[batch], table.ctf[batch], table.pixel_size_A)
        for batch in np.array_split(rows, -(-len(rows) // BATCH))])
    spread = scores.std(ddof=1) if len(scores) > 2 else 0.0  # fewer than 3 particles cannot decide
    z = float(scores.mean() / (spread / np.sqrt(len(scores)))) if spread > 0 else 0.0
    return ContrastMeasurement(z, len(scores), scores)


def decide_contrast(table, choice, input_path, read_images, sample=SAMPLE_PARTICLES):
    """(whether to negate the images, the record of the decision for the store's attrs), with a warning
    line where the images are negated, or where the choice is not what they show. choice: 'auto' (the
    measurement decides; where it cannot, the input's marking: white, or dark for a cryoSPARC blob/sign of
    +1 with one line refused), 'white' or 'dark' (the user's word); read_images as measure_contrast takes it.
    Raises UserError where nothing decides."""
    measurement = measure_contrast(table, read_images, sample)
    measured, marking = measurement.measured, table.contrast_marking
    if choice != "auto":
        contrast, decided_by = choice, f"--contrast {choice}"
        if measured and measured != choice:
            warn_input(f"{input_path}: --contrast {choice}, but the particles look {measured} "
                       f"({measurement.describe()}; docs/inputs.md)")
    elif measured:
        contrast, decided_by = measured, "measured"
    elif marking == "dark":
        raise UserError(f"{input_path}: blob/sign is +1 (cryoSPARC writes -1 for particles of the usual contrast) "
                        f"and the images do not show their contrast ({measurement.describe()}); give --contrast "
                        "white or --contrast dark")
    else:
        contrast, decided_by = "white", "assumed"
        warn_input(f"{input_path}: the images do not show whether the particles are white or dark "
                   f"({measurement.describe()}); taken as white, RELION's convention: if the maps come out "
                   "negative, convert again with --contrast dark (docs/inputs.md)")
    if contrast == "dark" and decided_by != "--contrast dark":
        warn_input(f"{input_path}: the particles are dark ({measurement.describe()}); the store holds them "
                   "negated, white as RELION's (give --contrast white to keep them as they are)")
    record = {"input": contrast, "stored": "white", "decided_by": decided_by, "z": round(measurement.z, 2),
              "particles_measured": measurement.n}
    return contrast == "dark", record
