"""hetrec reconstruct: a model-free, gold-standard reconstruction of any set of particles."""

import os

import click

from hetrec_dist.cli.command_line import refuse_empty
from hetrec_dist.data.run_folder import RunFolder

OUTPUTS = ("half1.mrc", "half2.mrc", "map.mrc", "fsc.png", "reconstruct.json")


@click.command("reconstruct")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), callback=refuse_empty,
              help="Folder for half1.mrc, half2.mrc, map.mrc, fsc.png and reconstruct.json.")
@click.option("--ind", type=click.Path(exists=True, dir_okay=False),
              help="Only these particles: an index file (rows of the store's input, as `train --ind` and "
                   "cryoDRGN's --ind take; `hetrec select -o x.pkl` writes one).")
@click.option("--exclude", type=click.Path(exists=True, dir_okay=False),
              help="Every particle but these (an index file, as --ind).")
@click.option("--clusters", help="SOURCE a run: the particles of these clusters of RUN/analyze.K, e.g. 3,7.")
@click.option("--k", "k", type=click.IntRange(min=1), default=20, show_default=True,
              help="With --clusters: which `hetrec analyze --k`.")
@click.option("--given-poses", is_flag=True,
              help="SOURCE a run that refined its poses or CTFs: use the store's, not the refined ones.")
@click.option("--store", type=click.Path(exists=True, file_okay=False),
              help="SOURCE a run: its particle store where it was moved or copied (the same particles, checked).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Of the random split into half-sets, where neither the store nor the run has half-sets.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier reconstruction in OUT.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def command(source, out, ind, exclude, clusters, k, given_poses, store, seed, batch_size, device, overwrite,
            quiet):
    """Reconstruct the particles of SOURCE (a particle store, or a training run: its particles, half-sets and
    refined poses) from their images, poses and CTFs alone, without a model, as RELION's relion_reconstruct:
    two half-maps from independent half-sets, the map of both, and their FSC (gold-standard, unmasked) with its
    0.143 resolution. This is how to check, without trusting the model, that a state found in the latent space
    is real. Several ranks: `hetrec launch --procs-per-node N -- reconstruct …`."""
    from hetrec_dist.distributed.training_world import init_training_world
    from hetrec_dist.train.inference import resolve_device

    chosen = _chosen_particles(source, ind, exclude, clusters, k, given_poses, store, seed)
    earlier = _earlier_outputs(out, overwrite)  # every rank refuses alike, before any rank removes them
    world = init_training_world(shared_memory=False)
    try:
        device = resolve_device(device, world.local_rank)  # before the earlier outputs go
        if world.is_root:
            for name in earlier:
                os.remove(os.path.join(out, name))
            os.makedirs(out, exist_ok=True)
        world.barrier()
        insertion = _insert(chosen, batch_size, device, world, quiet)
        if world.is_root:
            _write(out, insertion.reconstruct(), chosen)
    finally:
        world.close()


def _chosen_particles(source, ind, exclude, clusters, k, given_poses, store, seed):
    """What to reconstruct, as a dict: store (path), rows (sorted store rows or None: all), half_sets (N, store
    order), where they came from (words), poses (refined rotations and shifts, or None), ctf (refined CTFs, or
    None) and a description."""
    from hetrec_dist.data.half_sets import reconstruction_half_sets
    from hetrec_dist.data.store import open_store
    from hetrec_dist.data.subset import subset_rows
    from hetrec_dist.errors import UserError

    is_run = os.path.isdir(RunFolder(source).checkpoints)
    if not is_run:
        for option, value in (("--clusters", clusters), ("--given-poses", given_poses), ("--store", store)):
            if value:
                raise UserError(f"{option} needs SOURCE to be a training run; {source} is not one (no checkpoints/)")
        group = open_store(source)
        rows = subset_rows(group, ind, exclude) if ind or exclude else None
        what = "every particle" if rows is None else "the particles --ind/--exclude chose"
        half_sets, where = reconstruction_half_sets(group, rows, seed, what=what)
        return {"store": source, "rows": rows, "half_sets": half_sets, "half_sets_from": where, "poses": None,
                "ctf": None, "what": what}
    return _run_particles(source, ind, exclude, clusters, k, given_poses, store, seed)


def _run_particles(run, ind, exclude, clusters, k, given_poses, store_path, seed):
    import numpy as np

    from hetrec_dist.cli.run_files import run_checkpoint, run_particle_records, run_rows, run_store, run_store_path
    from hetrec_dist.cli.select import cluster_rows, parse_clusters
    from hetrec_dist.data.half_sets import reconstruction_half_sets
    from hetrec_dist.data.subset import subset_rows
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.ctf_refinement import checkpoint_ctf
    from hetrec_dist.train.pose_refinement import checkpoint_poses

    state = run_checkpoint(run)
    store = run_store(run, state, store_path)
    rows = run_rows(run, state, store)
    what = "the run's particles"
    if clusters is not None:
        chosen = parse_clusters(clusters)
        rows = cluster_rows(run, k, chosen, state, store)
        what = f"clusters {','.join(map(str, chosen))} of analyze.{k}"
    if ind or exclude:
        picked = subset_rows(store, ind, exclude)
        outside = 0 if rows is None else len(np.setdiff1d(picked, rows))
        rows = picked if rows is None else np.intersect1d(rows, picked)
        what += " that --ind/--exclude chose" + (f" ({outside:,} they chose are not the run's and were left out)"
                                                 if outside else "")
    if rows is not None and not len(rows):
        raise UserError(f"no particles left: {what} are none")
    half_sets, where = reconstruction_half_sets(store, rows, seed, run_particle_records(run, state, store)[1], what)
    poses, ctf = (None, None) if given_poses else (checkpoint_poses(state, store), checkpoint_ctf(state, store))
    refined = " and ".join(name for name, values in (("poses", poses), ("CTFs", ctf)) if values is not None)
    return {"store": store_path or run_store_path(run), "rows": rows, "half_sets": half_sets,
            "half_sets_from": where, "poses": poses, "ctf": ctf,
            "what": what + (f", with the run's refined {refined}" if refined else "")}


def _earlier_outputs(out, overwrite):
    """The files of an earlier reconstruction in OUT: refused without --overwrite; with it, removed before this
    one writes, so that a reconstruction stopped half-way never leaves old files beside new ones
    (reconstruct.json is written last)."""
    from hetrec_dist.data.atomic_files import refuse_link
    from hetrec_dist.errors import UserError

    refuse_link(out)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UserError(f"-o {out}: its folder {parent} does not exist")
    if len(os.path.basename(os.path.abspath(out)).encode()) > 255:
        raise UserError(f"-o {out}: a name longer than file systems take")
    earlier = [name for name in OUTPUTS if os.path.exists(os.path.join(out, name))]
    if earlier and not overwrite:
        raise UserError(f"{out} holds an earlier reconstruction ({', '.join(earlier)}); give another -o or "
                        "--overwrite to replace it")
    return earlier


def _insert(chosen, batch_size, device, world, quiet):
    from hetrec_dist.analysis.reconstruct import insert_particles

    insertion = insert_particles(chosen["store"], chosen["half_sets"], chosen["rows"], chosen["poses"],
                                 batch_size=batch_size, device=device, rank=world.rank, world_size=world.size,
                                 show_progress=not quiet and world.is_root, ctf=chosen["ctf"])
    insertion.sum_over(world)
    return insertion


def _write(out, result, chosen):
    import json

    from hetrec_dist.analysis.plots import fsc_plot
    from hetrec_dist.cli.command_line import reproducible_command
    from hetrec_dist.data.atomic_files import write_text
    from hetrec_dist.data.map_files import write_map
    from hetrec_dist.data.reader import ParticleStore

    store = ParticleStore(chosen["store"])
    pixel_size_A, box = store.pixel_size_A, store.box
    for index, half_map in enumerate(result.half_maps, 1):
        write_map(os.path.join(out, f"half{index}.mrc"), half_map, pixel_size_A)
    write_map(os.path.join(out, "map.mrc"), result.map, pixel_size_A)
    fsc_plot({"half-maps": result.fsc["curve"]}, box, pixel_size_A, os.path.join(out, "fsc.png"))
    summary = {"command": reproducible_command(), "store": os.path.abspath(chosen["store"]),
               "particles": sum(result.particles), "particles_per_half_set": list(result.particles),
               "which": chosen["what"], "half_sets_from": chosen["half_sets_from"],
               "pixel_size_A": pixel_size_A, "box": box, **{key: result.fsc[key] for key in
                                                           ("resolution_0.143_A", "resolution_0.5_A", "curve")},
               "shell_frequency_per_A": [shell / (box * pixel_size_A) for shell in range(len(result.fsc["curve"]))]}
    write_text(os.path.join(out, "reconstruct.json"), json.dumps(summary, indent=1))
    first, second = result.particles
    resolution_A = result.fsc["resolution_0.143_A"]
    agreement = (f"gold-standard FSC = 0.143 at {resolution_A:.1f} Å (unmasked)" if resolution_A < box * pixel_size_A
                 else "the half-maps do not agree even at the lowest resolution (too few particles, or no common "
                      "structure)")
    click.echo(f"reconstructed {first + second:,} particles ({chosen['what']}; half-sets {first:,} + {second:,}, "
               f"{chosen['half_sets_from']}): {agreement}; wrote {out}/map.mrc, half1.mrc, half2.mrc, fsc.png",
               err=True)
