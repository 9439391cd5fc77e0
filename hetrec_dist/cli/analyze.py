"""hetrec analyze: the latent landscape of a trained run, with maps and plots."""

import os

import click

from hetrec_dist.cli.command_line import moved_store_option


@click.command("analyze")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--k", "k", type=click.IntRange(min=1), default=20, show_default=True, help="k-means clusters.")
@click.option("--gt", "gt_dir", type=click.Path(exists=True, file_okay=False),
              help="Ground truth of a simulated dataset: also colour the latents by the true coordinate (or state).")
@click.option("--checkpoint", type=click.Path(exists=True),
              help="A checkpoint file (default: the run's last.pt).")
@moved_store_option
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--umap/--no-umap", "with_umap", default=True, show_default=True,
              help="A UMAP of the latents (of a 50,000-particle sample) beside the PCA.")
@click.option("--path", "path_ends", nargs=2, metavar="A B",
              help="Maps along the data from A to B, each a particle index (its row of z.npy; for a run on a "
                   "subset, RUN/particles.npy names its store row) or cN (the particle nearest k-means centre N): "
                   "the shortest path through the latents' nearest-neighbour graph.")
@click.option("--reconstruct", is_flag=True,
              help="Also reconstruct each cluster from its own particles, without the model (as `hetrec "
                   "reconstruct`): maps, half-maps and gold-standard resolution beside the model's maps.")
def command(run, k, gt_dir, checkpoint, store, device, seed, with_umap, path_ends, reconstruct):
    """PCA and UMAP of RUN/z.npy, k-means with maps at the particles nearest
    the centres, maps along PC1 and PC2, PNG plots and a summary page RUN/analyze.K/index.html."""
    from hetrec_dist.analysis.analyze import analyze_run
    from hetrec_dist.analysis.ground_truth import truth_colouring
    from hetrec_dist.cli.run_files import (
        particle_metadata,
        run_checkpoint,
        run_latents,
        run_model,
        run_rows,
        run_store_path,
    )
    from hetrec_dist.data.run_folder import RunFolder
    from hetrec_dist.data.store import check_same_particles, content_sha256, open_store
    from hetrec_dist.errors import UserError

    state = run_checkpoint(run, checkpoint)
    model = run_model(run, checkpoint, device, state)
    z, record = run_latents(run, state)
    store = store or run_store_path(run)
    try:  # the store may have stayed on the cluster: the analysis needs little of it
        group = open_store(store)
    except UserError as error:
        click.echo(f"Warning: the run's store is not readable ({error}; config.yaml's `store:` names it, --store "
                   "another): no signal scores, no plots coloured by defocus, pose or optics group, and --gt is not "
                   "checked against it", err=True)
        store_attrs, particles, rows = None, None, run_rows(run, state)
    else:  # but never another store's particles
        check_same_particles(state, content_sha256(group), store, run, "--store")
        rows = run_rows(run, state, group)
        store_attrs, particles = group.attrs.asdict(), particle_metadata(group, rows)
    truth = truth_colouring(gt_dir, store_attrs, rows) if gt_dir else None
    if with_umap and z.shape[1] < 3:
        click.echo(f"UMAP left out: the latents have {z.shape[1]} dimension(s), which PCA shows whole", err=True)
    earlier = os.path.isdir(os.path.join(run, f"analyze.{k}"))
    try:
        out_dir, summary = analyze_run(run, model, z, k, truth, seed, particles=particles,
                                       with_umap=with_umap, path_ends=path_ends, latents_record=record,
                                       reconstruct_clusters=_cluster_reconstructions(run, state, store, rows, seed,
                                                                                     model.basis.device)
                                       if reconstruct else None,
                                       signal=None if particles is None else _signal_scores(run, state, model, store,
                                                                                            rows),
                                       focus_mask=RunFolder(os.path.abspath(run)).focus_mask
                                       if state.get("focus_mask_sha256") else None)
    except OSError as error:  # a folder that cannot be written, a folder where a file should be
        raise UserError(f"cannot write the analysis in {run}: {error.strerror or error} "
                        f"({error.filename or 'a file'})") from None
    click.echo(f"{summary['n_particles']} particles in {k} clusters; maps, plots and index.html in {out_dir}"
               + (" (replacing the earlier analysis there)" if earlier else ""), err=True)


def _cluster_reconstructions(run, state, store_path, rows, seed, device):
    """A function of the clusters' labels (one per particle of z.npy) that reconstructs each cluster from its
    particles (analysis.reconstruct), with the run's half-sets (else the store's, else a random split of each
    cluster, as `hetrec reconstruct --clusters` makes one) and its refined poses and CTFs; None for a cluster with a
    half-set empty. UserError where the run's store is not readable."""
    import numpy as np

    from hetrec_dist.analysis.reconstruct import insert_groups
    from hetrec_dist.cli.run_files import run_particle_records, run_store
    from hetrec_dist.data.half_sets import choose_half_sets, store_half_sets
    from hetrec_dist.train.ctf_refinement import checkpoint_ctf
    from hetrec_dist.train.pose_refinement import checkpoint_poses

    group = run_store(run, state, store_path)  # the same particles, or a one-line error
    given = run_particle_records(run, state, group)[1]
    given = store_half_sets(group) if given is None else given
    poses, ctf = checkpoint_poses(state, group), checkpoint_ctf(state, group)
    store_rows = np.arange(group["images"].shape[0]) if rows is None else rows

    def reconstruct(labels):
        groups = [store_rows[labels == cluster] for cluster in range(labels.max() + 1)]
        half_sets = given
        if half_sets is None:  # a random split of each cluster
            half_sets = np.zeros(group["images"].shape[0], np.int8)
            for members in groups:
                if len(members):
                    half_sets[members] = choose_half_sets(group, seed, members)[0][members]
        insertions = insert_groups(store_path, groups, half_sets, poses, device=device, ctf=ctf)
        return [insertion.reconstruct() if min(insertion.particles) > 0 else None for insertion in insertions]

    return reconstruct


def _signal_scores(run, state, model, store_path, rows):
    """Each particle's signal score (train.inference.signal_scores), with a run's refined shifts."""
    from hetrec_dist.cli.run_files import run_store_path
    from hetrec_dist.cli.volume import refined_shift_corrections
    from hetrec_dist.train.inference import signal_scores

    corrections = refined_shift_corrections(state, store_path, run_store_path(run))
    return signal_scores(model, store_path, shift_corrections=corrections, rows=rows)
