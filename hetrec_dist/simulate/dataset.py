"""`hetrec simulate`: a heterogeneous dataset with ground truth, written as RELION 3.1 STAR + MRCS stacks.

Noise: white Gaussian noise of variance var(signal) / snr, var(signal) being the pixel variance of the
noise-free CTF-modulated images of the first block, over the whole box.
"""

import json
import os
import shutil

import mrcfile
import numpy as np
import pandas as pd
import starfile
from tqdm import tqdm

from hetrec_dist.data.checksums import sha256_file
from hetrec_dist.errors import UserError
from hetrec_dist.physics.rotations import matrices_from_relion_euler, random_relion_euler
from hetrec_dist.simulate.render import apply_ctf, project_atoms, render_map

BLOCK_IMAGES = 500
MOLECULE_BOX_A = 128.0  # default box width in Angstrom when no pixel size is given
VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST = 300.0, 2.7, 0.1


def draw_particles(n, box, pixel_size_A, rng):
    """Per-particle ground truth: conformational coordinate, RELION angles, shifts, CTF (store columns)."""
    coordinates = rng.uniform(0.0, 1.0, n)
    rot, tilt, psi = random_relion_euler(n, rng)
    shifts_px = np.clip(rng.normal(0.0, 2.0, (n, 2)), -6.0, 6.0)
    defocus_u = rng.uniform(10000.0, 25000.0, n)
    defocus_v = defocus_u - rng.uniform(0.0, 600.0, n)
    ctf = np.stack([np.full(n, box), np.full(n, pixel_size_A), defocus_u, defocus_v, rng.uniform(0.0, 180.0, n),
                    np.full(n, VOLTAGE_KV), np.full(n, CS_MM), np.full(n, AMPLITUDE_CONTRAST), np.zeros(n)], 1)
    return pd.DataFrame({"coordinate": coordinates, "rot": rot, "tilt": tilt, "psi": psi,
                         "shift_x_px": shifts_px[:, 0], "shift_y_px": shifts_px[:, 1]}), ctf


def clean_images(model, particles, ctf, box, pixel_size_A):
    rotations = matrices_from_relion_euler(particles["rot"], particles["tilt"], particles["psi"])
    shifts = particles[["shift_x_px", "shift_y_px"]].to_numpy()
    images = project_atoms(model.positions(particles["coordinate"].to_numpy()), model.weights, model.sigma_A,
                           rotations, shifts, box, pixel_size_A)
    return apply_ctf(images, ctf, pixel_size_A)


def _star_tables(particles, ctf, stack_names, pixel_size_A, box):
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnMicrographOriginalPixelSize": [pixel_size_A], "rlnVoltage": [VOLTAGE_KV],
        "rlnSphericalAberration": [CS_MM], "rlnAmplitudeContrast": [AMPLITUDE_CONTRAST],
        "rlnImagePixelSize": [pixel_size_A], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    table = pd.DataFrame({
        "rlnImageName": stack_names,
        "rlnAngleRot": particles["rot"], "rlnAngleTilt": particles["tilt"], "rlnAnglePsi": particles["psi"],
        "rlnOriginXAngst": particles["shift_x_px"] * pixel_size_A,
        "rlnOriginYAngst": particles["shift_y_px"] * pixel_size_A,
        "rlnDefocusU": ctf[:, 2], "rlnDefocusV": ctf[:, 3], "rlnDefocusAngle": ctf[:, 4],
        "rlnPhaseShift": ctf[:, 8], "rlnOpticsGroup": np.ones(len(particles), dtype=int)})
    return {"optics": optics, "particles": table}


def _write_ground_truth(directory, model, coordinates, n_maps, box, pixel_size_A, particles_sha256):
    os.makedirs(directory)
    np.save(os.path.join(directory, "coordinates.npy"), coordinates)
    map_coordinates = np.linspace(0.0, 1.0, n_maps)
    files = []
    for i, (c, positions) in enumerate(zip(map_coordinates, model.positions(map_coordinates))):
        name = f"map_{i:02d}.mrc"
        density = render_map(positions, model.weights, model.sigma_A, box, pixel_size_A).astype(np.float32)
        with mrcfile.new(os.path.join(directory, name)) as mrc:
            mrc.set_data(density)
            mrc.voxel_size = pixel_size_A
        files.append({"file": name, "coordinate": float(c)})
    with open(os.path.join(directory, "ground_truth.json"), "w") as f:
        json.dump({"maps": files, "coordinates_file": "coordinates.npy", "box": box,
                   "pixel_size_A": pixel_size_A, "particles_star": "../particles.star",
                   "particles_star_sha256": particles_sha256}, f, indent=2)


def simulate_dataset(out, model, n, box, pixel_size_A=None, snr=0.1, seed=0, images_per_stack=10000,
                     n_maps=5, overwrite=False, show_progress=True):
    """Write OUT/particles.star, OUT/stacks/*.mrcs and OUT/ground_truth/. Built in a temporary folder
    beside OUT and moved into place at the end, so OUT is never half-written."""
    if os.path.exists(out):
        if not overwrite:
            raise UserError(f"{out} already exists; use --overwrite to replace it")
        if not os.path.isfile(os.path.join(out, "particles.star")):
            raise UserError(f"{out} exists and is not a simulated dataset; refusing to overwrite it")
    if n < 1 or box < 8 or box % 2:
        raise UserError(f"need at least one particle and an even box of at least 8 (got n={n}, box={box})")
    pixel_size_A = pixel_size_A or MOLECULE_BOX_A / box
    rng = np.random.default_rng(seed)
    particles, ctf = draw_particles(n, box, pixel_size_A, rng)
    first = slice(0, min(n, BLOCK_IMAGES))
    noise_std = float(np.sqrt(clean_images(model, particles[first], ctf[first], box, pixel_size_A).var() / snr))
    partial = f"{out}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.join(partial, "stacks"))
    stack_names = []
    with tqdm(total=n, unit="img", desc="simulate", disable=not show_progress, dynamic_ncols=True) as progress:
        for stack, start in enumerate(range(0, n, images_per_stack)):
            count = min(images_per_stack, n - start)
            name = f"stacks/particles_{stack:04d}.mrcs"
            stack_names += [f"{i + 1:06d}@{name}" for i in range(count)]
            with mrcfile.new_mmap(os.path.join(partial, name), shape=(count, box, box), mrc_mode=2) as mrc:
                mrc.voxel_size = pixel_size_A
                for block in range(start, start + count, BLOCK_IMAGES):
                    rows = slice(block, min(block + BLOCK_IMAGES, start + count))
                    images = clean_images(model, particles[rows], ctf[rows], box, pixel_size_A)
                    images += np.random.default_rng([seed, block]).normal(0.0, noise_std, images.shape)
                    mrc.data[rows.start - start:rows.stop - start] = images
                    progress.update(rows.stop - rows.start)
    starfile.write(_star_tables(particles, ctf, stack_names, pixel_size_A, box),
                   os.path.join(partial, "particles.star"))
    _write_ground_truth(os.path.join(partial, "ground_truth"), model, particles["coordinate"].to_numpy(),
                        n_maps, box, pixel_size_A, sha256_file(os.path.join(partial, "particles.star")))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(partial, out)
    return {"n": n, "box": box, "pixel_size_A": pixel_size_A, "noise_std": noise_std}
