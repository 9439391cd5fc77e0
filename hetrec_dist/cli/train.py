"""hetrec train: learn a latent space and a structural basis from a particle store."""

import contextlib
import dataclasses
import os

import click

from hetrec_dist.cli.command_line import finite_floats, refuse_empty, reproducible_command
from hetrec_dist.data.run_folder import RunFolder


@click.command("train")
@click.argument("store", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), callback=refuse_empty, help="Run folder.")
@click.option("--config", "preset", type=click.Path(dir_okay=False),
              help="YAML preset (see configs/); unknown keys are an error.")
@click.option("--epochs", "-n", type=click.IntRange(min=1), help="Epochs in all (default 20).")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), help="Images per step (default 256).")
@click.option("--zdim", type=click.IntRange(min=1), help="Latent dimension (default 8).")
@click.option("--n-basis", type=click.IntRange(min=1), help="Basis volumes K besides the mean (default 16).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), callback=finite_floats,
              help="Learning rate of encoder and decoder (default 1e-3).")
@click.option("--lr-basis", type=click.FloatRange(min=0, min_open=True), callback=finite_floats,
              help="Learning rate of the basis (default 1e-2).")
@click.option("--beta", type=click.FloatRange(min=0), callback=finite_floats, help="Weight of the KL term (default 1).")
@click.option("--mask-diameter", "mask_diameter_A", type=click.FloatRange(min=0, min_open=True), callback=finite_floats,
              metavar="ANGSTROM",
              help="Confine the basis volumes to a sphere of this diameter (soft edge outside it), as RELION's "
                   "particle diameter (default 90% of the box).")
@click.option("--mask", type=click.Choice(["envelope", "sphere"]),
              help="envelope (default): after the first epoch, the sphere times a soft mask around the model's "
                   "density (its RMS over the latent space, above --mask-threshold of its maximum), updated as "
                   "it trains; sphere: the sphere alone.")
@click.option("--mask-threshold", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              callback=finite_floats,
              help="Envelope mask: fraction of the maximum RMS density where its core ends (default 0.1).")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--device", help="cpu, cuda, cuda:N or auto (default).")
@click.option("--gt", type=click.Path(exists=True, file_okay=False),
              help="Simulated data: ground_truth/ folder to evaluate against (see `hetrec eval`).")
@click.option("--eval-every", type=click.IntRange(min=0), help="Evaluate against --gt every N epochs (and at the end).")
@click.option("--num-workers", type=click.IntRange(min=0), help="DataLoader worker processes (default 0).")
@click.option("--basis-reduction", metavar="STRATEGY",
              help="Several ranks: how the sparse basis gradient is summed: auto (default: the fewest bytes "
                   "each step), factors, union, gather or dense.")
@click.option("--half-sets/--no-half-sets", default=None,
              help="Train a basis per half-set of the particles, for half-maps and a gold-standard resolution "
                   "at each latent (`hetrec fsc RUN --z`); about 1.2x the time.")
@click.option("--focus-mask", type=click.Path(exists=True, dir_okay=False),
              help="Focused heterogeneity: an MRC mask (0 to 1, as relion_mask_create writes; the particles' box "
                   "and pixel size, or another box of the same extent, resampled; a binary mask gets a soft edge) "
                   "to which the basis volumes are confined: the latent space describes what varies inside it, "
                   "outside it every map is the mean. RUN/focus_mask.mrc keeps it, and --resume uses that copy.")
@click.option("--refine-poses/--no-refine-poses", default=None,
              help="Refine each particle's rotation and shift as it trains, after --pose-warmup epochs; the refined "
                   "poses go to RUN/poses.npz (`hetrec export` writes them as STAR, .cs or poses.pkl).")
@click.option("--shifts-only/--rotations-too", "shifts_only", default=None,
              help="Refine the shifts only (implies --refine-poses).")
@click.option("--pose-warmup", "pose_warmup_epochs", type=click.IntRange(min=0),
              help="With --refine-poses: epochs on the given poses before refining them (default 3).")
@click.option("--refine-ctf/--no-refine-ctf", default=None,
              help="Refine each particle's defocus as it trains, after --ctf-warmup epochs, against the resolutions "
                   "the half-maps' FSC says the map knows (so it needs --half-sets); the refined CTFs go to "
                   "RUN/ctf.npz (`hetrec export` writes them as STAR, .cs or ctf.pkl).")
@click.option("--refine-astigmatism", is_flag=True, default=None,
              help="With --refine-ctf: refine each particle's astigmatism too (default: its mean defocus only).")
@click.option("--ctf-warmup", "ctf_warmup_epochs", type=click.IntRange(min=0),
              help="With --refine-ctf: epochs on the given defoci before refining them (default 3).")
@click.option("--defocus-prior", "defocus_prior_A", type=click.FloatRange(min=1),
              callback=finite_floats,
              help="With --refine-ctf: the given defoci's RMS error thought likely, in Å (default 500); a "
                   "particle's defocus moves further from its given value only where its image says so.")
@click.option("--ind", type=click.Path(dir_okay=False),
              help="Train on these particles only: an index file (cryoDRGN's .pkl, .npy or text) of rows of the "
                   "store's input, as `hetrec select -o indices.pkl` writes and cryoDRGN's --ind takes. Nothing is "
                   "copied; RUN/particles.npy records them.")
@click.option("--exclude", type=click.Path(dir_okay=False),
              help="Train on every particle but these (an index file, as --ind); with --ind, those of --ind but "
                   "these.")
@click.option("--resume", is_flag=True, help="Continue RUN from its last checkpoint (with its saved settings).")
@click.option("--checkpoint", "resume_checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="With --resume: continue from this checkpoint of RUN (e.g. RUN/checkpoints/epoch_0010.pt where "
                   "last.pt is damaged) instead of its last.")
@click.option("--overwrite", is_flag=True, help="Replace an existing RUN.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(store, out, preset, ind, exclude, resume, resume_checkpoint, overwrite, quiet, **overrides):
    """Train the sparse Fourier structural-basis VAE on STORE (from `hetrec convert`), writing OUT/:
    config.yaml, train.log, tb/ (TensorBoard), checkpoints/ and z.npy (latent means, store order; of the
    particles --ind/--exclude choose, if given, which RUN/particles.npy names).

    Settings come from the defaults, then --config, then these options. With --resume, the run's saved
    config.yaml comes first, then --config (a warning names each saved setting it changes), then the options
    given here (e.g. a larger --epochs).

    Under a launcher (deepspeed, mpiexec, srun; see `hetrec launch`) every rank trains on its own shard of
    STORE with --batch-size images a step; rank 0 writes OUT.
    """
    from hetrec_dist.analysis.ground_truth import run_evaluator
    from hetrec_dist.distributed.training_ranks import training_ranks
    from hetrec_dist.errors import UserError, warn_input
    from hetrec_dist.train.config import build_config
    from hetrec_dist.train.trainer import Trainer

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if resume_checkpoint and not resume:
        raise UserError("--checkpoint names where a resumed run continues from: give --resume too")
    if resume_checkpoint and os.path.dirname(os.path.realpath(resume_checkpoint)) != os.path.realpath(
            RunFolder(out).checkpoints):
        raise UserError(f"--checkpoint {resume_checkpoint}: not one of {out}/checkpoints; a run continues from its "
                        "own checkpoints")
    shifts_only = overrides.pop("shifts_only")
    if shifts_only is not None:
        overrides["refine_rotations"] = not shifts_only
    if shifts_only and overrides["refine_poses"] is False:
        raise UserError("--shifts-only refines shifts; it needs --refine-poses, not --no-refine-poses")
    if shifts_only:
        overrides["refine_poses"] = True
    if not (overrides["refine_poses"] or resume):
        for option, name in (("--pose-warmup", "pose_warmup_epochs"), ("--rotations-too", "refine_rotations")):
            if overrides.get(name) is not None:
                warn_input(f"{option} has no effect without --refine-poses")
    if not (overrides["refine_ctf"] or resume):
        for option, name in (("--refine-astigmatism", "refine_astigmatism"), ("--ctf-warmup", "ctf_warmup_epochs"),
                             ("--defocus-prior", "defocus_prior_A")):
            if overrides.get(name) is not None:
                raise UserError(f"{option} sets how the CTF is refined: give --refine-ctf too")
    for name in ("gt", "focus_mask"):
        if overrides.get(name):
            overrides[name] = os.path.abspath(overrides[name])
    saved = RunFolder(out).config
    config = build_config(preset, overrides, saved if resume and os.path.isfile(saved) else None)
    if config.focus_mask:  # a --config file's path too is taken from the current folder, and kept absolute
        config = dataclasses.replace(config, focus_mask=os.path.abspath(config.focus_mask))
    if config.gt:
        from hetrec_dist.analysis.ground_truth import check_ground_truth_belongs, check_ground_truth_extent
        from hetrec_dist.data.store import open_store

        attrs = open_store(store).attrs.asdict()
        check_ground_truth_belongs(config.gt, attrs)
        check_ground_truth_extent(config.gt, attrs["box"], attrs["pixel_size_A"])
    with training_ranks(config.collective_timeout_s, config.shared_memory_sums, _stopped_line(out)) as world:
        trainer = Trainer(store, out, config, world, resume=resume, resume_checkpoint=resume_checkpoint,
                          overwrite=overwrite, show_progress=not quiet, ind=ind, exclude=exclude,
                          command=reproducible_command(), evaluate=run_evaluator(out, config.gt) if config.gt else None)
        trainer.train()
    if world.is_root:
        import numpy as np

        z = np.load(trainer.run.latents)
        _report_latent_spread(trainer, z)
        _report_half_set_agreement(trainer, z)
        _report_unequal_noise(trainer)
    if not quiet and world.is_root:
        if config.gt:
            _echo_evaluation(out)
        click.echo(f"trained {trainer.epoch} epoch{'' if trainer.epoch == 1 else 's'} on {world.size} rank(s); "
                   f"outputs in {out}", err=True)


def _echo_evaluation(run):
    import json

    from hetrec_dist.analysis.ground_truth import summary_line

    with open(RunFolder(run).evaluation) as f:
        scores = json.load(f)
    click.echo(f"against the ground truth: {summary_line(scores)}; FSC=0.5 at {scores['mean_resolution_0.5_A']:.2f} Å "
               "(RUN/eval.json)", err=True)


def _report_latent_spread(trainer, z):
    """How the latent variance spreads over directions of z (the run's latents), in train.log and on the console
    (--quiet hides progress bars, not results); a run whose latents no single direction dominates is a warning
    (PCA and k-means may hide its motion)."""
    from hetrec_dist.analysis.latent import latent_spread

    _, dominant, line = latent_spread(z)
    trainer.log.info(line)
    click.echo(line if dominant else f"Warning: {line}", err=True)


def _report_half_set_agreement(trainer, z):
    """With half-sets: whether the halves' maps agree along the first direction of z (the run's latents;
    analysis.half_maps), in train.log and on the console; a warning where they do not."""
    if trainer.model.shape.n_half_sets != 2:
        return
    from hetrec_dist.analysis.half_maps import agreement_line, half_set_agreement

    agree, line = agreement_line(half_set_agreement(trainer.model, z))
    trainer.log.info(line)
    click.echo(line if agree else f"Warning: {line}", err=True)


def _report_unequal_noise(trainer):
    """A warning, in train.log and on the console, when an unweighted run's optics groups differ in noise."""
    from hetrec_dist.model.noise import unequal_groups_line
    from hetrec_dist.train.noise_model import NoiseModel

    noise = trainer.component(NoiseModel)
    line = unequal_groups_line(noise.spectrum) if noise.kind == "white" else None
    if line:
        trainer.log.info(line)
        click.echo(f"Warning: {line}", err=True)


def _stopped_line(run_dir):
    """What rank 0 says, on the console and in train.log, when its launcher stops it or goes
    (distributed.training_ranks): where to continue from."""
    import time

    from hetrec_dist.data.atomic_files import open_log

    def tell(why):
        line = f"{why}; continue from the last checkpoint in {run_dir}/checkpoints with --resume"
        os.write(2, f"\nError: {line}\n".encode())
        with contextlib.suppress(OSError):
            with open_log(RunFolder(run_dir).log) as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped: {line}\n")

    return tell
