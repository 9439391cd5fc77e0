"""hetrec select: the particles of chosen k-means clusters, in the input's own format."""

import os

import click

from hetrec_dist.cli.command_line import finite_floats, moved_store_option, refuse_empty


@click.command("select")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--clusters", help="Comma-separated cluster numbers, e.g. 3,7.")
@click.option("--signal-below", type=float, callback=finite_floats,
              help="Instead of --clusters: the particles whose signal score (RUN/analyze.K/signal_score.npy: "
                   "low for junk) is below this, e.g. 0.3.")
@click.option("--k", "k", type=click.IntRange(min=1), default=20, show_default=True,
              help="Which `hetrec analyze --k` to use.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), callback=refuse_empty,
              help="subset.star (RELION input), subset.cs (cryoSPARC input) or indices.pkl (any input: the "
                   "particles' 0-based rows in the input, cryoDRGN's --ind).")
@moved_store_option
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
def command(run, clusters, signal_below, k, out, store, overwrite):
    """Write the particles of the chosen clusters of RUN/analyze.K (or those whose signal score there is below
    --signal-below: junk) as a STAR or .cs file like the input
    (all columns and optics kept), or as a cryoDRGN-style index .pkl. A run trained with --half-sets writes
    its half-sets into rlnRandomSubset or alignments3D/split; a run trained with --refine-poses or --refine-ctf
    writes its refined poses or defoci (`hetrec export` writes every particle's)."""
    from hetrec_dist.analysis.select import write_subset
    from hetrec_dist.cli.run_files import check_new_file, run_checkpoint, run_particle_records, run_store
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.ctf_refinement import checkpoint_ctf
    from hetrec_dist.train.pose_refinement import checkpoint_poses

    if (clusters is None) == (signal_below is None):
        raise UserError("give --clusters or --signal-below (one of them)")
    _labels_path(run, k)
    check_new_file(out, overwrite)
    chosen = parse_clusters(clusters) if clusters is not None else None
    state = run_checkpoint(run)
    store = run_store(run, state, store)
    if chosen is not None:
        indices, which = cluster_rows(run, k, chosen, state, store), f"of clusters {','.join(map(str, chosen))}"
    else:
        indices, which = signal_rows(run, k, signal_below, state, store), f"with a signal score below {signal_below:g}"
    source_rows, half_sets = run_particle_records(run, state, store)
    indices_only = out.lower().endswith(".pkl")
    poses, ctf = (None, None) if indices_only else (checkpoint_poses(state, store), checkpoint_ctf(state, store))
    write_subset(indices, store.attrs.asdict(), source_rows, out, half_sets, poses, ctf)
    click.echo(f"wrote {len(indices)} particles {which} to {out}", err=True)
    if indices_only:
        for key, what, command in (("pose_corrections", "poses", "-o poses.pkl"),
                                   ("ctf_corrections", "CTFs", "-o ctf.pkl --ctf")):
            if key in state:
                click.echo(f"the run refined its {what}: `hetrec export {run} {command}` writes them for cryoDRGN",
                           err=True)


def _labels_path(run, k):
    from hetrec_dist.errors import UserError

    labels_path = os.path.join(run, f"analyze.{k}", "kmeans_labels.npy")
    if not os.path.isfile(labels_path):
        done = sorted(name for name in os.listdir(run) if name.startswith("analyze."))
        also = f" (the run has {', '.join(done)}: give its --k)" if done else ""
        raise UserError(f"{run}: no analyze.{k}/kmeans_labels.npy; run `hetrec analyze {run} --k {k}` first{also}")
    return labels_path


def parse_clusters(clusters):
    """--clusters '3,7' -> [3, 7]; UserError (one line) for anything else."""
    from hetrec_dist.errors import UserError

    try:
        chosen = [int(c) for c in clusters.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--clusters {clusters!r}: give cluster numbers separated by commas") from None
    if not chosen:
        raise UserError(f"--clusters {clusters!r}: give at least one cluster number")
    return chosen


def cluster_rows(run, k, chosen, state, store):
    """The sorted store rows of the particles in clusters `chosen` of RUN/analyze.K, refused where that analysis
    is not of the run's current latents (state: the run's checkpoint; store: its opened store)."""
    import numpy as np

    from hetrec_dist.analysis.select import cluster_members
    from hetrec_dist.cli.run_files import run_latents, run_rows

    labels_path = _labels_path(run, k)
    _check_clusters_are_current(run, k, run_latents(run, state)[1])
    indices = cluster_members(np.load(labels_path), chosen, k)  # positions in z.npy: the run's particles
    rows = run_rows(run, state, store)
    return indices if rows is None else rows[indices]


def signal_rows(run, k, below, state, store):
    """The sorted store rows of the particles whose signal score in RUN/analyze.K is below `below`, refused as
    cluster_rows refuses an analysis of other latents, or one without signal scores."""
    import numpy as np

    from hetrec_dist.analysis.analyze import SIGNAL_FILE
    from hetrec_dist.cli.run_files import run_latents, run_rows
    from hetrec_dist.errors import UserError

    path = os.path.join(run, f"analyze.{k}", SIGNAL_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{run}/analyze.{k} has no {SIGNAL_FILE} (its store was not readable when it was made, or "
                        f"an older hetrec made it); run `hetrec analyze {run} --k {k}` again")
    z, record = run_latents(run, state)
    _check_clusters_are_current(run, k, record)
    scores = np.load(path, allow_pickle=False)
    if scores.shape != (len(z),) or not np.isfinite(scores).all():
        raise UserError(f"{path}: not the signal scores of the run's {len(z)} particles (damaged); run `hetrec "
                        f"analyze {run} --k {k}` again")
    indices = np.flatnonzero(scores < below)
    rows = run_rows(run, state, store)
    return indices if rows is None else rows[indices]


def _check_clusters_are_current(run, k, latents_record):
    """A UserError where RUN/analyze.K was computed from other latents than the run's current z.npy (whose
    record, RUN/z.json, matches the run's checkpoint: cli.run_files.run_latents), as after a resume and an
    embed. Analyses made before summaries recorded their latents are taken as they are."""
    import json

    from hetrec_dist.errors import UserError

    try:
        with open(os.path.join(run, f"analyze.{k}", "summary.json")) as f:
            analysed = json.load(f).get("latents") or {}
    except (OSError, ValueError):
        analysed = {}
    current = (latents_record or {}).get("z_sha256")
    if None not in (analysed.get("z_sha256"), current) and analysed["z_sha256"] != current:
        raise UserError(f"{run}/analyze.{k} clusters the latents of epoch {analysed.get('epoch')}, but the run's "
                        f"z.npy is of epoch {latents_record.get('epoch')}; run `hetrec analyze {run} --k {k}` again")
