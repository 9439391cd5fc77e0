"""hetrec volume / hetrec embed: maps and latents from a trained run."""

import os

import click


def run_checkpoint(run, checkpoint=None):
    """The loaded checkpoint of a run: --checkpoint, or RUN/checkpoints/last.pt."""
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.checkpoint import last_checkpoint, load_checkpoint

    path = checkpoint or last_checkpoint(run)
    if path is None:
        raise UserError(f"{run}: no checkpoint (checkpoints/last.pt); train first or give --checkpoint")
    return load_checkpoint(path)


def run_model(run, checkpoint, device):
    """The model of a run's checkpoint, in eval mode on `device`."""
    from hetrec_dist.train.trainer import load_model, resolve_device

    return load_model(run_checkpoint(run, checkpoint), resolve_device(device))


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
    return z


@click.command("volume")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--z", "z_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Latents: a .npy array or a text file, one row per map.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Folder for the maps.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True), help="Default: RUN/checkpoints/last.pt.")
@click.option("--device", default="auto", show_default=True)
@click.option("--prefix", default="vol_", show_default=True, help="File names: PREFIX000.mrc, ...")
def volume_command(run, z_path, out, checkpoint, device, prefix):
    """Write one MRC map per latent row of --z (pixel size in the header, the input data's frame)."""
    import torch

    from hetrec_dist.analysis.maps import write_map

    model = run_model(run, checkpoint, device)
    z = read_latents(z_path, model.shape.zdim)
    with torch.no_grad():
        for i, latent in enumerate(torch.from_numpy(z).to(model.basis.device)):
            write_map(os.path.join(out, f"{prefix}{i:03d}.mrc"), model.volume(latent).cpu().numpy(),
                      model.pixel_size_A)
    click.echo(f"wrote {len(z)} maps to {out}", err=True)


@click.command("embed")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--store", type=click.Path(), help="Default: the store the run was trained on.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True), help="Default: RUN/checkpoints/last.pt.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Default: RUN/z.npy.")
@click.option("--device", default="auto", show_default=True)
def embed_command(run, store, checkpoint, out, device):
    """Recompute the latent mean of every particle (store order) from a checkpoint."""
    import numpy as np
    import yaml

    from hetrec_dist.train.trainer import embed

    model = run_model(run, checkpoint, device)
    if store is None:
        with open(os.path.join(run, "config.yaml")) as f:
            store = yaml.safe_load(f)["store"]
    z = embed(model, store)
    out = out or os.path.join(run, "z.npy")
    np.save(out + ".tmp.npy", z)
    os.replace(out + ".tmp.npy", out)
    click.echo(f"wrote latents of {len(z)} particles to {out}", err=True)
