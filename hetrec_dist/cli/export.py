"""hetrec export: a run's refined poses, for every particle, in the input's format or as cryoDRGN's poses.pkl."""

import os

import click

from hetrec_dist.cli.command_line import moved_store_option, refuse_empty


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), callback=refuse_empty,
              help="particles.star (RELION input), particles.cs (cryoSPARC input) or poses.pkl (cryoDRGN's, from "
                   "any input format; a run that refined its poses).")
@click.option("--checkpoint", type=click.Path(exists=True), help="A checkpoint file (default: the run's last.pt).")
@moved_store_option
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def command(run, out, checkpoint, store, overwrite):
    """Write the poses RUN refined (`hetrec train --refine-poses`) for every particle it trained on.

    A .star or .cs is the input file with every field kept and the pose fields replaced: rlnAngleRot/Tilt/Psi
    and rlnOriginXAngst/YAngst (and rlnOriginX/Y where the input has them), or alignments3D/pose and
    alignments3D/shift. A .pkl is cryoDRGN's poses.pkl (rotations, translations as fractions of the box), one
    row per row of the input (refused where the store holds part of it, e.g. with --optics-group; a run on a
    subset, --ind, gives the other rows their poses as given). A run trained with --half-sets also writes its
    half-sets, as `hetrec select` does.
    """
    import numpy as np

    from hetrec_dist.analysis.select import write_cryodrgn_poses, write_subset
    from hetrec_dist.cli.run_files import check_new_file, run_checkpoint, run_particle_records, run_rows, run_store
    from hetrec_dist.data.store import part_of_input
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.pose_refinement import checkpoint_poses

    extension = os.path.splitext(out)[1].lower()
    if extension not in (".star", ".cs", ".pkl"):
        raise UserError(f"{out}: write a .star or .cs file like the input, or a cryoDRGN poses.pkl")
    check_new_file(out, overwrite)
    state = run_checkpoint(run, checkpoint)
    store = run_store(run, state, store)
    poses = checkpoint_poses(state, store)
    if poses is None:
        raise UserError(f"{run} did not refine its poses: train it with --refine-poses (its poses are the input's)")
    if not state["pose_corrections"]["table"].any():
        raise UserError(f"{run} has refined no pose yet (epoch {state['epoch']}, --pose-warmup "
                        f"{state['config'].get('pose_warmup_epochs')}): its poses are the input's")
    rows = run_rows(run, state, store)
    rows = np.arange(len(poses[0])) if rows is None else rows
    source = store.attrs["sources"]["metadata"][0]["path"]
    if extension != ".pkl" and os.path.splitext(source)[1].lower() != extension:  # before write_subset's message,
        raise UserError(f"{out}: the particles came from {source}; write a {os.path.splitext(source)[1]} file "
                        "(or poses.pkl)")  # which offers a .pkl of indices
    if extension == ".pkl":
        part = part_of_input(store.attrs.asdict())
        if part is not None:  # cryoDRGN pairs poses.pkl row by row with the input's images
            raise UserError(f"{out}: the store holds only the particles of {part} of {source}, so a poses.pkl "
                            f"would not line up with its images; write a {os.path.splitext(source)[1]} file (its "
                            "rows are the input's) and parse it with cryoDRGN")
        write_cryodrgn_poses(out, *poses, store.attrs["box"])
    else:
        source_rows, half_sets = run_particle_records(run, state, store)
        write_subset(rows, store.attrs.asdict(), source_rows, out, half_sets, poses)
    given = len(poses[0]) - len(rows) if extension == ".pkl" else 0
    click.echo(f"wrote the refined poses of {len(rows)} particles to {out}"
               + (f" (and the {given} the run did not train on, as given)" if given else ""), err=True)
