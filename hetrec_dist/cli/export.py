"""hetrec export: a run's refined poses and CTFs, for every particle, in the input's format or as cryoDRGN's
poses.pkl or ctf.pkl."""

import os

import click

from hetrec_dist.cli.command_line import moved_store_option, refuse_empty


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), callback=refuse_empty,
              help="particles.star (RELION input), particles.cs (cryoSPARC input), or cryoDRGN's poses.pkl (or "
                   "ctf.pkl with --ctf) from any input format.")
@click.option("--ctf", "ctf_pkl", is_flag=True, help="With a .pkl OUT: write cryoDRGN's ctf.pkl, not poses.pkl.")
@click.option("--checkpoint", type=click.Path(exists=True), help="A checkpoint file (default: the run's last.pt).")
@moved_store_option
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def command(run, out, ctf_pkl, checkpoint, store, overwrite):
    """Write what RUN refined (`hetrec train --refine-poses`, `--refine-ctf`) for every particle it trained on.

    A .star or .cs is the input file with every field kept and the refined fields replaced: the poses
    (rlnAngleRot/Tilt/Psi and rlnOriginXAngst/YAngst, and rlnOriginX/Y where the input has them, or
    alignments3D/pose and alignments3D/shift) and the defoci (rlnDefocusU/V/Angle, or ctf/df1_A, ctf/df2_A and
    ctf/df_angle_rad). A .pkl is cryoDRGN's poses.pkl (rotations, translations as fractions of the box) or, with
    --ctf, its ctf.pkl, one row per row of the input (refused where the store holds part of it, e.g. with
    --optics-group; a run on a subset, --ind, gives the other rows their values as given). A run trained with
    --half-sets also writes its half-sets, as `hetrec select` does.
    """
    import numpy as np

    from hetrec_dist.analysis.select import write_cryodrgn_ctf, write_cryodrgn_poses, write_subset
    from hetrec_dist.cli.run_files import check_new_file, run_checkpoint, run_particle_records, run_rows, run_store
    from hetrec_dist.data.store import part_of_input
    from hetrec_dist.errors import UserError

    extension = os.path.splitext(out)[1].lower()
    if extension not in (".star", ".cs", ".pkl"):
        raise UserError(f"{out}: write a .star or .cs file like the input, or a cryoDRGN poses.pkl (ctf.pkl with "
                        "--ctf)")
    if ctf_pkl and extension != ".pkl":
        raise UserError(f"--ctf writes cryoDRGN's ctf.pkl; a {extension} file holds the refined defoci anyway")
    if extension == ".pkl" and not ctf_pkl and "ctf" in os.path.basename(out).lower():
        raise UserError(f"{out}: named like a ctf.pkl, but without --ctf export writes poses; give --ctf for the "
                        "refined CTFs")
    check_new_file(out, overwrite)
    state = run_checkpoint(run, checkpoint)
    store = run_store(run, state, store)
    refined = _refined(run, state, store, "ctf" if ctf_pkl else "poses" if extension == ".pkl" else None)
    rows = run_rows(run, state, store)
    rows = np.arange(store["images"].shape[0]) if rows is None else rows
    source = store.attrs["sources"]["metadata"][0]["path"]
    if extension != ".pkl" and os.path.splitext(source)[1].lower() != extension:  # before write_subset's message,
        raise UserError(f"{out}: the particles came from {source}; write a {os.path.splitext(source)[1]} file "
                        "(or a .pkl)")  # which offers a .pkl of indices
    what = " and ".join(name for name, values in refined.items() if values is not None)
    if extension == ".pkl":
        part = part_of_input(store.attrs.asdict())
        if part is not None:  # cryoDRGN pairs a .pkl row by row with the input's images
            raise UserError(f"{out}: the store holds only the particles of {part} of {source}, so a .pkl "
                            f"would not line up with its images; write a {os.path.splitext(source)[1]} file (its "
                            "rows are the input's) and parse it with cryoDRGN")
        if ctf_pkl:
            write_cryodrgn_ctf(out, refined["CTFs"], store.attrs.asdict())
        else:
            write_cryodrgn_poses(out, *refined["poses"], store.attrs["box"])
    else:
        source_rows, half_sets = run_particle_records(run, state, store)
        write_subset(rows, store.attrs.asdict(), source_rows, out, half_sets, refined["poses"], refined["CTFs"])
    given = store["images"].shape[0] - len(rows) if extension == ".pkl" else 0
    click.echo(f"wrote the refined {what} of {len(rows)} particles to {out}"
               + (f" (and the {given} the run did not train on, as given)" if given else ""), err=True)


def _refined(run, state, store, only):
    """{"poses": the run's refined poses or None, "CTFs": its refined CTFs or None}: what it has refined (a
    .star or .cs takes all of it), or only ("poses" or "ctf") the one a .pkl asks for. UserError where the run
    refined none of it, or none yet."""
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.ctf_refinement import CHECKPOINT_KEY as CTF_KEY
    from hetrec_dist.train.ctf_refinement import checkpoint_ctf
    from hetrec_dist.train.pose_refinement import CHECKPOINT_KEY as POSE_KEY
    from hetrec_dist.train.pose_refinement import checkpoint_poses

    options = {"poses": (POSE_KEY, "--refine-poses", "pose_warmup_epochs", "--pose-warmup"),
               "ctf": (CTF_KEY, "--refine-ctf", "ctf_warmup_epochs", "--ctf-warmup")}
    if only and options[only][0] not in state:
        other = " (it refined its CTFs: give --ctf for its ctf.pkl)" if only == "poses" and CTF_KEY in state else ""
        raise UserError(f"{run} did not refine its {'poses' if only == 'poses' else 'CTFs'}: train it with "
                        f"{options[only][1]} (they are the input's){other}")
    kept = [name for name, (key, *_) in options.items() if key in state and name == (only or name)]
    if not kept:
        raise UserError(f"{run} did not refine its poses or CTFs: train it with --refine-poses or --refine-ctf "
                        "(its values are the input's)")
    done = [name for name in kept if state[options[name][0]]["table"].any()]
    if not done:
        warmups = ", ".join(f"{options[name][3]} {state['config'].get(options[name][2])}" for name in kept)
        raise UserError(f"{run} has refined no {' or '.join('pose' if n == 'poses' else 'CTF' for n in kept)} yet "
                        f"(epoch {state['epoch']}, {warmups}): they are the input's")
    return {"poses": checkpoint_poses(state, store) if "poses" in done else None,
            "CTFs": checkpoint_ctf(state, store) if "ctf" in done else None}
