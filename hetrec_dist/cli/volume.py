"""hetrec volume / hetrec embed: maps and latents from a trained run."""

import os

import click

from hetrec_dist.cli.command_line import refuse_empty
from hetrec_dist.cli.run_files import run_model, run_store_path
from hetrec_dist.data.run_folder import RunFolder


def read_latents(path, zdim):
    import numpy as np

    from hetrec_dist.errors import UserError

    try:
        z = np.load(path) if path.endswith(".npy") else np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable latent file ({err})") from None
    z = np.atleast_2d(np.asarray(z, dtype=np.float32))
    if z.ndim != 2 or z.shape[1] != zdim:
        raise UserError(f"{path}: latents of shape {z.shape}, but the model's latent dimension is {zdim}")
    bad = np.flatnonzero(~np.isfinite(z).all(axis=1))
    if bad.size:
        raise UserError(f"{path}: row {bad[0] + 1} is {z[bad[0]].tolist()}; every latent must be finite")
    return z


@click.command("volume")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--z", "z_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Latents: a .npy array or a text file, one row per map.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), callback=refuse_empty,
              help="Folder for the maps.")
@click.option("--checkpoint", type=click.Path(exists=True),
              help="A checkpoint file (default: the run's last.pt).")
@click.option("--device", default="auto", show_default=True)
@click.option("--prefix", default="vol_", show_default=True, help="File names: PREFIX000.mrc, ...")
@click.option("--half-maps", is_flag=True,
              help="A run trained with --half-sets: also each half-map, PREFIX000_half1.mrc and _half2.mrc (the "
                   "map is their mean).")
@click.option("--overwrite", is_flag=True, help="Replace the PREFIX*.mrc maps an earlier run left in OUT.")
def volume_command(run, z_path, out, checkpoint, device, prefix, half_maps, overwrite):
    """Write one MRC map per latent row of --z (pixel size in the header, the input data's frame)."""
    from hetrec_dist.analysis.half_maps import require_half_sets
    from hetrec_dist.analysis.maps import write_latent_maps
    from hetrec_dist.data.atomic_files import refuse_link

    model = run_model(run, checkpoint, device)
    if half_maps:
        require_half_sets(model, run)
    z = read_latents(z_path, model.shape.zdim)
    refuse_link(out)
    _clear_earlier_maps(out, prefix, overwrite)
    write_latent_maps(model, z, out, prefix + "{:03d}.mrc", half_maps=half_maps)
    click.echo(f"wrote {len(z)} maps{' and their half-maps' if half_maps else ''} to {out}", err=True)


def _clear_earlier_maps(out, prefix, overwrite):
    """Maps of an earlier `volume` into OUT would mix with this one's (more latents then, fewer now): refused
    without --overwrite, removed with it."""
    import glob

    from hetrec_dist.errors import UserError

    earlier = sorted(glob.glob(os.path.join(glob.escape(out), glob.escape(prefix) + "*.mrc")))
    if earlier and not overwrite:
        raise UserError(f"{out} holds {len(earlier)} maps of an earlier run ({os.path.basename(earlier[0])}, …); "
                        "give another -o, another --prefix, or --overwrite to replace them")
    for path in earlier:
        os.remove(path)


@click.command("embed")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--store", type=click.Path(), help="Default: the store the run was trained on.")
@click.option("--checkpoint", type=click.Path(exists=True),
              help="A checkpoint file (default: the run's last.pt).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), callback=refuse_empty, help="Default: RUN/z.npy.")
@click.option("--device", default="auto", show_default=True)
@click.option("--ind", type=click.Path(dir_okay=False),
              help="With -o FILE: the latents of these particles only (an index file: data/subset.py; rows of "
                   "the store's input, as cryoDRGN's --ind).")
@click.option("--exclude", type=click.Path(dir_okay=False), help="With -o FILE: all particles but these.")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o FILE (RUN/z.npy is always recomputed).")
def embed_command(run, store, checkpoint, out, device, ind, exclude, overwrite):
    """Recompute the latent mean of each particle the run trained on (store order) from a checkpoint; with
    --ind/--exclude and -o FILE, of the particles they choose (e.g. those a run on a subset left out)."""
    from hetrec_dist.cli.run_files import check_new_file, run_checkpoint, run_rows
    from hetrec_dist.data.store import check_same_particles, content_sha256, open_store
    from hetrec_dist.data.subset import subset_rows
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.inference import embed, load_model, resolve_device, save_latents

    state = run_checkpoint(run, checkpoint)
    store = store or run_store_path(run)
    group = open_store(store)
    store_sha256 = content_sha256(group)
    out = out or RunFolder(run).latents
    own = os.path.realpath(out) == os.path.realpath(RunFolder(run).latents)
    if not own:  # RUN/z.npy is the run's own, recomputed; another file is the user's
        if not out.lower().endswith(".npy"):
            raise UserError(f"-o {out}: name a .npy file (numpy's format; its record goes beside it as "
                            f"{os.path.splitext(os.path.basename(out))[0]}.json)")
        check_new_file(out, overwrite)
    if own and (ind or exclude):
        raise UserError(f"{run}/z.npy holds the latents of the particles the run trained on; give -o FILE for "
                        "those --ind/--exclude choose")
    if own:  # what analyze and select pair
        try:  # with the run: the latents of its own particles, by its own model
            check_same_particles(state, store_sha256, store, run)
            if checkpoint and state.get("run_id") != run_checkpoint(run).get("run_id"):
                raise UserError(f"{checkpoint} is a checkpoint of another run than {run}")
        except UserError as error:
            raise UserError(f"{error}; for the latents of other particles or models give -o FILE (RUN/z.npy holds "
                            "the run's own)") from None
    if ind or exclude:
        rows = subset_rows(group, ind, exclude)
    else:  # the run's particles, where the store holds them (the same content as the run's store)
        rows = run_rows(run, state, group) if state.get("store_sha256") in (None, store_sha256) else None
    z = embed(load_model(state, resolve_device(device)), store,
              shift_corrections=refined_shift_corrections(state, store, run_store_path(run)), rows=rows)
    save_latents(out, z, state, store_sha256, rows)
    click.echo(f"wrote latents of {len(z)} particles to {out}", err=True)


def refined_shift_corrections(state, store, run_store):
    """The shift corrections of a run that refined its poses (N x 2 pixels), where `store` gives the poses the
    run refined (by content, whatever its path); None for a run without them or another store's particles.
    Raises UserError where the run's own store no longer gives them."""
    from hetrec_dist.data.store import open_store
    from hetrec_dist.train.particle_corrections import check_given, given_fingerprint
    from hetrec_dist.train.pose_refinement import given_poses_sha256

    corrections = state.get("pose_corrections")
    if corrections is None:
        return None
    fingerprint = given_poses_sha256(open_store(store))
    if os.path.realpath(store) == os.path.realpath(run_store):
        check_given(corrections, fingerprint, "poses")
    elif given_fingerprint(corrections) != fingerprint:
        return None
    return corrections["table"][:, 3:]
