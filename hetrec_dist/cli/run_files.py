"""What the analysis commands read from a training run folder, with one-line errors when it is missing."""

import os

from hetrec_dist.data.run_folder import RunFolder


def run_checkpoint(run, checkpoint=None):
    """The loaded checkpoint of a run: --checkpoint, or the run's newest."""
    from hetrec_dist.data.folder_lock import hold_for_reading
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint

    hold_for_reading(run)  # until this command ends: no --overwrite of the run meanwhile
    path = checkpoint or last_checkpoint(run)
    if path is None:
        raise UserError(f"{run}: no checkpoint in {run}/checkpoints; train first or give --checkpoint")
    return load_checkpoint(path)


def run_model(run, checkpoint, device, state=None):
    """The model of a run's checkpoint (or of `state`, a checkpoint already loaded), in eval mode on `device`."""
    from hetrec_dist.train.inference import load_model, resolve_device

    return load_model(state or run_checkpoint(run, checkpoint), resolve_device(device))


def run_latents(run, state):
    """(RUN/z.npy, its record RUN/z.json as a dict or None), refused where z.npy holds the latents of another
    checkpoint than `state` (train.inference.read_run_latents)."""
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.inference import read_run_latents

    path = RunFolder(run).latents
    if not os.path.isfile(path):
        raise UserError(f"{run}: no z.npy; run `hetrec embed {run}` first")
    return read_run_latents(path, state)


def run_store_path(run):
    """The particle store a run was trained on, from RUN/config.yaml."""
    import yaml

    from hetrec_dist.errors import UserError

    try:
        with open(RunFolder(run).config) as f:
            return yaml.safe_load(f)["store"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise UserError(f"{run}: no readable config.yaml naming its store; is it a `hetrec train` run?") from None


def run_store(run, state=None, store=None):
    """The store a run was trained on (config.yaml's), or `store` (--store: the same particles moved or copied),
    opened to read. UserError where it is not readable or, given the run's checkpoint `state`, holds other
    particles than the run was trained on (data.store.check_same_particles: by content, whatever the path)."""
    from hetrec_dist.data.store import check_same_particles, content_sha256, open_store

    path = store or run_store_path(run)
    group = open_store(path)
    if state is not None:
        check_same_particles(state, content_sha256(group), path, run, "--store")
    return group


def particle_metadata(store, rows=None):
    """What may confound a run's latents, per particle of an opened store (run_store) in store order, or of
    those at `rows` (a run's subset, run_rows): {label: (N,) array} of defocus (Å), optics group, the pose's tilt
    and in-plane angle (RELION's tilt and psi, degrees) and the particle's index in the store (acquisition
    drift)."""
    import numpy as np

    from hetrec_dist.physics.rotations import relion_euler_from_matrices

    rows = np.arange(store["images"].shape[0]) if rows is None else rows
    _, tilt, psi = relion_euler_from_matrices(store["rotations"][:][rows])
    defocus_A = store["ctf"][:][rows, 2:4].mean(1)
    return {"defocus (Å)": defocus_A, "optics group": store["optics_group"][:][rows].astype(float),
            "tilt (°)": tilt, "in-plane angle psi (°)": psi, "particle index": rows.astype(float)}


def run_rows(run, state, store=None):
    """The store rows of the particles a run trained on (data.subset.run_rows; checked against the run's store
    where it is given), or None for every particle."""
    from hetrec_dist.data.subset import run_rows as subset_run_rows

    return subset_run_rows(run, state, None if store is None else store["images"].shape[0])


def check_new_file(out, overwrite):
    """One-line errors for an output file that exists (without --overwrite) or whose folder does not."""
    from hetrec_dist.errors import UserError

    if os.path.exists(out) and not overwrite:
        raise UserError(f"{out} already exists; use --overwrite to replace it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise UserError(f"{out}: its folder does not exist")


def run_particle_records(run, state, store):
    """What is written back beside a run's particles (analysis.select.write_subset): each stored particle's row
    in the input's metadata (N) and, for a half-set run, its half-set (N, else None), from the checkpoint
    `state` and the run's store (a zarr group)."""

    from hetrec_dist.data.half_sets import checkpoint_half_sets
    from hetrec_dist.data.store import source_rows as stored_source_rows

    source_rows = stored_source_rows(store)
    with_halves = state["model_shape"].get("n_half_sets", 1) == 2
    return source_rows, checkpoint_half_sets(state, run, len(source_rows)) if with_halves else None
