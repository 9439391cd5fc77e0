"""hetrec eval: a trained run against the ground truth of a simulated dataset."""


import click

from hetrec_dist.cli.command_line import moved_store_option
from hetrec_dist.data.run_folder import RunFolder


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--gt", "gt_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The ground_truth/ folder of a `hetrec simulate` output.")
@click.option("--checkpoint", type=click.Path(exists=True),
              help="A checkpoint file (default: the run's last.pt).")
@moved_store_option
@click.option("--device", default="auto", show_default=True)
def command(run, gt_dir, checkpoint, store, device):
    """Per ground-truth conformation: FSC between the map decoded at the mean latent of its particles and
    the true map (resolution at 0.5 and 0.143, mean FSC); |Spearman| of latent PC1 against the true
    coordinate, and the held-out R^2 of the coordinate predicted linearly from z; for a run trained with
    --half-sets, also its half-maps' FSC=0.143 resolution at each of these latents. For `simulate --assembly`
    data, per true state: the FSC and each subunit's occupancy in the map at its particles' mean latent; the
    states' separation in the latent space (k-means ARI, neighbour purity) and the junk's (AUC). Writes RUN/eval.json,
    the decoded maps RUN/eval_maps/decoded_NN.mrc and eval/* scalars to RUN/tb at the checkpoint's epoch.
    `hetrec train --gt DIR --eval-every N` does the same during training."""
    from hetrec_dist.analysis.ground_truth import check_ground_truth_belongs, evaluate_run
    from hetrec_dist.cli.run_files import run_checkpoint, run_latents, run_model, run_rows, run_store
    from hetrec_dist.train.metrics import TensorBoardLogger

    state = run_checkpoint(run, checkpoint)
    group = run_store(run, state, store)
    check_ground_truth_belongs(gt_dir, group.attrs.asdict())
    model = run_model(run, checkpoint, device, state)
    z = run_latents(run, state)[0]
    metrics = TensorBoardLogger(RunFolder(run).tensorboard)
    result = evaluate_run(run, model, z, gt_dir, metrics, state["epoch"], run_rows(run, state, group))
    metrics.close()
    if result.get("kind") == "composition":
        _echo_composition(result)
        return
    for m in result["maps"]:
        click.echo(f"coordinate {m['coordinate']:.2f}: FSC=0.5 at {m['resolution_0.5_A']:.1f} Å, "
                   f"0.143 at {m['resolution_0.143_A']:.1f} Å, mean FSC {m['mean_fsc']:.3f} "
                   f"({m['n_particles']} particles)"
                   + (f"; half-maps FSC=0.143 at {m['half_map_resolution_0.143_A']:.1f} Å"
                      if "half_map_resolution_0.143_A" in m else ""))
    click.echo(f"mean FSC {result['mean_fsc']:.3f}; latent PC1 |Spearman| {result['latent_pc1_spearman']:.3f}; "
               f"held-out linear R^2 of the coordinate from z {result['latent_linear_r2']:.3f}")


def _echo_composition(result):
    from hetrec_dist.analysis.ground_truth import summary_line

    for s in result["states"]:
        occupancy = " ".join(f"{chr(ord('A') + j)} {value:.2f}" for j, value in enumerate(s["occupancy"]))
        click.echo(f"state {s['state']} ({s['subunits']}, {s['n_particles']} particles): FSC=0.5 at "
                   f"{s['resolution_0.5_A']:.1f} Å, mean FSC {s['mean_fsc']:.3f}; occupancy {occupancy}")
    click.echo(summary_line(result))
