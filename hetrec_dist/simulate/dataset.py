"""`hetrec simulate`: a heterogeneous dataset with ground truth, written as RELION 3.1 STAR + MRCS stacks.

Noise: Gaussian, of variance var(signal) / snr over the whole box, var(signal) being the pixel variance of
the noise-free CTF-modulated images of the first block. Its spectrum is white, or falls with spatial
frequency (NOISE_SPECTRA: "falling" approximates what counting detectors record, the noise power dropping
by about a factor of ten from low frequencies to 5 Å and below, from the detector's MTF² and the ice's
low-frequency excess; RELION's per-group noise spectra (sigma2) of real data fall alike).

What a consensus refinement gets wrong is simulated too: poses written with errors (a rotation about a
random axis by |N(0, pose_error_deg)|, shifts with N(0, shift_error_px) added), defoci written with
N(0, defocus_error_A) added (and each component of the astigmatism with N(0, astigmatism_error_A)), and junk
(particles of a compact object unrelated to the model). ground_truth/ keeps the truth: the coordinate of
every particle (NaN for junk), junk.npy, poses.npz (the true rotations and shifts in pixels, store
convention), ctf.npz (the true defocus U, V in Å and angle in degrees).
"""

import dataclasses
import json
import os
import shutil

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from hetrec_dist.data.checksums import sha256_file
from hetrec_dist.errors import UserError
from hetrec_dist.physics.ctf import corrected_defocus
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler, relion_euler_from_matrices
from hetrec_dist.simulate.atom_models import Assembly, AtomModel
from hetrec_dist.simulate.render import apply_ctf, project_atoms, render_map

BLOCK_IMAGES = 500
MOLECULE_BOX_A = 128.0  # default box width in Angstrom when no pixel size is given
VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.1
NOISE_SPECTRA = ("white", "falling")
MIN_SNR = 1e-8  # far below any real data (0.01-0.1); much lower overflows float32
FALLING_NOISE_FLOOR, FALLING_NOISE_SCALE_PER_A = 0.1, 0.1  # power 1 at k = 0, 0.1 + 0.9 exp(-(k / 0.1 Å⁻¹)²)


@dataclasses.dataclass
class SimulationSettings:
    """What `hetrec simulate` varies (its options); units in the names."""
    n: int = 10000
    box: int = 128
    pixel_size_A: float | None = None  # None: MOLECULE_BOX_A / box
    snr: float | tuple[float, ...] = 0.1  # several: one optics group each, the particles split evenly in order
    seed: int = 0
    images_per_stack: int = 10000
    n_maps: int = 5
    noise_spectrum: str = "white"
    pose_error_deg: float = 0.0
    shift_error_px: float = 0.0
    defocus_error_A: float = 0.0
    astigmatism_error_A: float = 0.0
    junk_fraction: float = 0.0
    defocus_min_A: float = 10000.0
    defocus_max_A: float = 25000.0

    def __post_init__(self):
        if self.n < 1 or self.box < 8 or self.box % 2:
            raise UserError(f"need at least one particle and an even box of at least 8 (got n={self.n}, "
                            f"box={self.box})")
        if self.noise_spectrum not in NOISE_SPECTRA:
            raise UserError(f"noise spectrum {self.noise_spectrum!r} is not one of {', '.join(NOISE_SPECTRA)}")
        if not 0 <= self.junk_fraction < 1:
            raise UserError(f"junk fraction {self.junk_fraction} is not in [0, 1)")
        if not 0 < self.defocus_min_A <= self.defocus_max_A:
            raise UserError(f"defocus range {self.defocus_min_A:g} to {self.defocus_max_A:g} Å is not a range of "
                            "positive defoci")
        self.pixel_size_A = self.pixel_size_A or MOLECULE_BOX_A / self.box
        self.snr = tuple(np.atleast_1d(np.asarray(self.snr, dtype=float)).tolist())
        if len(self.snr) > self.n:
            raise UserError(f"--snr given {len(self.snr)} times makes {len(self.snr)} optics groups, more than the "
                            f"{self.n} particles")
        if not self.snr or not min(self.snr) >= MIN_SNR:
            raise UserError(f"SNR {min(self.snr or [0]):g}: give at least {MIN_SNR:g} (real data are at 0.01-0.1)")

    def optics_groups(self):
        """Each particle's optics group (1, 2, ... one per SNR), in contiguous runs of about n / groups."""
        return np.arange(self.n) * len(self.snr) // self.n + 1


def draw_particles(n, box, pixel_size_A, rng, defocus_range_A=(10000.0, 25000.0)):
    """Per-particle ground truth: conformational coordinate, RELION angles, shifts, CTF (store columns)."""
    coordinates = rng.uniform(0.0, 1.0, n)
    rot, tilt, psi = random_relion_euler(n, rng)
    shifts_px = np.clip(rng.normal(0.0, 2.0, (n, 2)), -6.0, 6.0)
    defocus_u = rng.uniform(*defocus_range_A, n)
    defocus_v = defocus_u - rng.uniform(0.0, 600.0, n)
    ctf = np.stack([np.full(n, box), np.full(n, pixel_size_A), defocus_u, defocus_v, rng.uniform(0.0, 180.0, n),
                    np.full(n, VOLTAGE_KV), np.full(n, CS_MM), np.full(n, AMPLITUDE_CONTRAST), np.zeros(n)], 1)
    return pd.DataFrame({"coordinate": coordinates, "rot": rot, "tilt": tilt, "psi": psi,
                         "shift_x_px": shifts_px[:, 0], "shift_y_px": shifts_px[:, 1]}), ctf


def junk_model(model, rng):
    """A compact object unrelated to `model`: as many atoms, in one blob of the model's radius of gyration."""
    radius = np.sqrt(np.mean(np.sum(model.start ** 2, axis=1)))
    start = rng.normal(size=model.start.shape) * radius / np.sqrt(3) * [1.4, 0.8, 0.8]
    return AtomModel(start=start - start.mean(axis=0), weights=model.weights, sigma_A=model.sigma_A)


def clean_images(model, particles, ctf, box, pixel_size_A, junk=None):
    """Noise-free CTF-modulated images at the particles' true poses; rows where `junk` show junk's object (an
    Assembly's junk: particles["junk_part"], a loose subunit or nothing)."""
    rotations = matrices_from_relion_euler(particles["rot"], particles["tilt"], particles["psi"])
    shifts = particles[["shift_x_px", "shift_y_px"]].to_numpy()
    if isinstance(model, Assembly):
        positions, weights = _assembly_atoms(model, particles)
    else:
        positions, weights = model.positions(np.nan_to_num(particles["coordinate"].to_numpy())), model.weights
        if junk is not None and "junk" in particles and particles["junk"].any():
            positions[particles["junk"].to_numpy()] = junk.start
    images = project_atoms(positions, weights, model.sigma_A, rotations, shifts, box, pixel_size_A)
    return apply_ctf(images, ctf, pixel_size_A)


def _assembly_atoms(model, particles):
    """(positions n x A x 3, weights n x A) of an Assembly's particles: their state's subunits, or for junk a
    loose subunit (junk_part j > 0) or nothing (0: an empty image)."""
    states = particles["state"].to_numpy()
    positions = np.repeat(model.start[None], len(particles), axis=0)
    weights = model.state_weights(np.maximum(states, 0))
    for row in np.flatnonzero(states < 0):
        part = int(particles["junk_part"].iloc[row])
        weights[row] = model.part_weights(part) if part else 0.0
        if part:
            positions[row] = model.loose_subunit(part)
    return positions, weights


def _draw_states(particles, model, junk, rng):
    """An Assembly's particles get a state (by its populations; -1 for junk) and junk a junk_part: half of it
    empty images (0), half a loose subunit (1..J, at random)."""
    states = rng.choice(len(model.populations), size=len(particles), p=model.populations)
    loose = rng.integers(1, len(model.subunits) + 1, size=len(particles))
    parts = np.where(rng.uniform(size=len(particles)) < 0.5, 0, loose)
    return particles.assign(state=np.where(junk, -1, states), junk_part=np.where(junk, parts, -1),
                            coordinate=np.nan)


def noise_images(shape, pixel_size_A, spectrum, std, rng):
    """Gaussian noise images (n x D x D) of standard deviation `std` (a number, or n x 1 x 1) over the box and
    spectrum `spectrum`."""
    noise = rng.normal(0.0, 1.0, shape)
    if spectrum == "white":
        return noise * std
    freqs = np.fft.fftfreq(shape[-1], d=pixel_size_A)
    k2 = freqs[:, None] ** 2 + freqs[None, :] ** 2
    power = FALLING_NOISE_FLOOR + (1 - FALLING_NOISE_FLOOR) * np.exp(-k2 / FALLING_NOISE_SCALE_PER_A ** 2)
    coloured = np.fft.ifft2(np.fft.fft2(noise) * np.sqrt(power / power.mean())).real
    return coloured * std


def perturbed_poses(particles, pose_error_deg, shift_error_px, rng):
    """The particles' RELION angles and shifts as a refinement with these errors would report them."""
    if pose_error_deg == 0 and shift_error_px == 0:
        return particles
    rotations = matrices_from_relion_euler(particles["rot"], particles["tilt"], particles["psi"])
    axes = rng.normal(size=(len(particles), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.radians(np.abs(rng.normal(0.0, pose_error_deg, len(particles))))
    errors = Rotation.from_rotvec(axes * angles[:, None]).as_matrix()
    rot, tilt, psi = relion_euler_from_matrices(errors @ rotations)
    shifts = particles[["shift_x_px", "shift_y_px"]].to_numpy() + rng.normal(0.0, shift_error_px,
                                                                              (len(particles), 2))
    return particles.assign(rot=rot, tilt=tilt, psi=psi, shift_x_px=shifts[:, 0], shift_y_px=shifts[:, 1])


def perturbed_defocus(ctf, defocus_error_A, rng, astigmatism_error_A=0.0):
    """The CTF columns as an estimate with these errors would report them: N(0, defocus_error_A) added to each
    particle's mean defocus, and N(0, astigmatism_error_A) to each of its astigmatism's components (the
    half-difference of U and V along cos 2a and sin 2a, physics.ctf.corrected_defocus)."""
    reported = ctf.copy()
    if defocus_error_A:
        reported[:, 2:4] += rng.normal(0.0, defocus_error_A, len(ctf))[:, None]
    if astigmatism_error_A:
        errors = np.zeros((len(ctf), 3))
        errors[:, 1:] = rng.normal(0.0, astigmatism_error_A, (len(ctf), 2))
        reported[:, 2], reported[:, 3], reported[:, 4] = corrected_defocus(*reported[:, 2:5].T, errors)
    return reported


def _star_tables(particles, ctf, stack_names, pixel_size_A, box, groups):
    numbers = np.unique(groups)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in numbers], "rlnOpticsGroup": numbers,
        "rlnMicrographOriginalPixelSize": pixel_size_A, "rlnVoltage": VOLTAGE_KV,
        "rlnSphericalAberration": CS_MM, "rlnAmplitudeContrast": AMPLITUDE_CONTRAST,
        "rlnImagePixelSize": pixel_size_A, "rlnImageSize": box, "rlnImageDimensionality": 2})
    table = pd.DataFrame({
        "rlnImageName": stack_names,
        "rlnAngleRot": particles["rot"], "rlnAngleTilt": particles["tilt"], "rlnAnglePsi": particles["psi"],
        "rlnOriginXAngst": particles["shift_x_px"] * pixel_size_A,
        "rlnOriginYAngst": particles["shift_y_px"] * pixel_size_A,
        "rlnDefocusU": ctf[:, 2], "rlnDefocusV": ctf[:, 3], "rlnDefocusAngle": ctf[:, 4],
        "rlnPhaseShift": ctf[:, 8], "rlnOpticsGroup": groups})
    return {"optics": optics, "particles": table}


def _write_map(directory, name, positions, weights, sigma_A, settings):
    density = render_map(positions, weights, sigma_A, settings.box, settings.pixel_size_A).astype(np.float32)
    with mrcfile.new(os.path.join(directory, name)) as mrc:
        mrc.set_data(density)
        mrc.voxel_size = settings.pixel_size_A


def _write_ground_truth(directory, model, particles, ctf, settings, particles_sha256):
    os.makedirs(directory)
    np.save(os.path.join(directory, "coordinates.npy"), particles["coordinate"].to_numpy())
    np.save(os.path.join(directory, "junk.npy"), particles["junk"].to_numpy())
    np.savez(os.path.join(directory, "poses.npz"),
             rotations=matrices_from_relion_euler(particles["rot"], particles["tilt"], particles["psi"]),
             shifts=particles[["shift_x_px", "shift_y_px"]].to_numpy())
    np.savez(os.path.join(directory, "ctf.npz"), defocus_u_A=ctf[:, 2], defocus_v_A=ctf[:, 3],
             defocus_angle_deg=ctf[:, 4])
    record = {"coordinates_file": "coordinates.npy", "junk_file": "junk.npy", "poses_file": "poses.npz",
              "ctf_file": "ctf.npz",
              "box": settings.box, "pixel_size_A": settings.pixel_size_A, "particles_star": "../particles.star",
              "particles_star_sha256": particles_sha256, "settings": dataclasses.asdict(settings)}
    if isinstance(model, Assembly):
        record.update(_write_assembly_truth(directory, model, particles, settings))
    else:
        record["maps"] = []
        map_coordinates = np.linspace(0.0, 1.0, settings.n_maps)
        for i, (c, positions) in enumerate(zip(map_coordinates, model.positions(map_coordinates))):
            _write_map(directory, f"map_{i:02d}.mrc", positions, model.weights, model.sigma_A, settings)
            record["maps"].append({"file": f"map_{i:02d}.mrc", "coordinate": float(c)})
    with open(os.path.join(directory, "ground_truth.json"), "w") as f:
        json.dump(record, f, indent=2)


def _write_assembly_truth(directory, model, particles, settings):
    """states.npy (each particle's state, -1 for junk), junk_parts.npy (a junk particle's loose subunit, 0 for an
    empty image, -1 for the rest), a map of each state, of the core and of each subunit; their record."""
    np.save(os.path.join(directory, "states.npy"), particles["state"].to_numpy())
    np.save(os.path.join(directory, "junk_parts.npy"), particles["junk_part"].to_numpy())
    states = []
    for index, (present, population) in enumerate(zip(model.states, model.populations)):
        name = f"state_{index:02d}.mrc"
        _write_map(directory, name, model.start, model.state_weights([index])[0], model.sigma_A, settings)
        states.append({"file": name, "subunits": "".join("1" if p else "0" for p in present),
                       "population": float(population)})
    parts = ["core.mrc"] + [f"subunit_{chr(ord('A') + j)}.mrc" for j in range(len(model.subunits))]
    for part, name in enumerate(parts):
        _write_map(directory, name, model.start, model.part_weights(part), model.sigma_A, settings)
    return {"kind": "composition", "states_file": "states.npy", "junk_parts_file": "junk_parts.npy",
            "states": states, "core_map": parts[0], "subunit_maps": parts[1:],
            "maps": [{"file": s["file"], "coordinate": index} for index, s in enumerate(states)]}


def simulate_dataset(out, model, settings=None, overwrite=False, show_progress=True, **overrides):
    """Write OUT/particles.star, OUT/stacks/*.mrcs and OUT/ground_truth/ (settings: SimulationSettings, or
    its fields as keywords). Built in a temporary folder beside OUT and moved into place at the end, so
    OUT is never half-written."""
    settings = settings or SimulationSettings(**overrides)
    if os.path.exists(out):
        if not overwrite:
            raise UserError(f"{out} already exists; use --overwrite to replace it")
        if not os.path.isfile(os.path.join(out, "particles.star")):
            raise UserError(f"{out} exists and is not a simulated dataset; refusing to overwrite it")
    n, box, pixel_size_A = settings.n, settings.box, settings.pixel_size_A
    rng = np.random.default_rng(settings.seed)
    particles, ctf = draw_particles(n, box, pixel_size_A, rng, (settings.defocus_min_A, settings.defocus_max_A))
    junk = rng.uniform(size=n) < settings.junk_fraction
    particles = particles.assign(junk=junk, coordinate=np.where(junk, np.nan, particles["coordinate"]))
    other = junk_model(model, rng)
    if isinstance(model, Assembly):
        particles = _draw_states(particles, model, junk, rng)
    first = slice(0, min(n, BLOCK_IMAGES))
    signal = clean_images(model, particles[first], ctf[first], box, pixel_size_A, other)
    noise_std = np.sqrt(signal.var() / np.array(settings.snr))[settings.optics_groups() - 1]  # per particle
    partial = f"{out}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.join(partial, "stacks"))
    stack_names = []
    with tqdm(total=n, unit="img", desc="simulate", disable=not show_progress, dynamic_ncols=True) as progress:
        for stack, start in enumerate(range(0, n, settings.images_per_stack)):
            count = min(settings.images_per_stack, n - start)
            name = f"stacks/particles_{stack:04d}.mrcs"
            stack_names += [f"{i + 1:06d}@{name}" for i in range(count)]
            with mrcfile.new_mmap(os.path.join(partial, name), shape=(count, box, box), mrc_mode=2) as mrc:
                mrc.voxel_size = pixel_size_A
                for block in range(start, start + count, BLOCK_IMAGES):
                    rows = slice(block, min(block + BLOCK_IMAGES, start + count))
                    images = clean_images(model, particles[rows], ctf[rows], box, pixel_size_A, other)
                    images += noise_images(images.shape, pixel_size_A, settings.noise_spectrum,
                                           noise_std[rows, None, None],
                                           np.random.default_rng([settings.seed, block]))
                    mrc.data[rows.start - start:rows.stop - start] = images
                    progress.update(rows.stop - rows.start)
    reported = perturbed_poses(particles, settings.pose_error_deg, settings.shift_error_px,
                               np.random.default_rng([settings.seed, n, 1]))
    reported_ctf = perturbed_defocus(ctf, settings.defocus_error_A, np.random.default_rng([settings.seed, n, 2]),
                                     settings.astigmatism_error_A)
    starfile.write(_star_tables(reported, reported_ctf, stack_names, pixel_size_A, box, settings.optics_groups()),
                   os.path.join(partial, "particles.star"))
    _write_ground_truth(os.path.join(partial, "ground_truth"), model, particles, ctf, settings,
                        sha256_file(os.path.join(partial, "particles.star")))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(partial, out)
    state_sizes = None
    if isinstance(model, Assembly):
        states = particles["state"].to_numpy()
        state_sizes = np.bincount(states[states >= 0], minlength=len(model.populations)).tolist()
    return {"n": n, "box": box, "pixel_size_A": pixel_size_A, "noise_std": sorted(set(noise_std.tolist())),
            "n_junk": int(junk.sum()), "state_sizes": state_sizes}
