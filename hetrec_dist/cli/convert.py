"""hetrec convert: particle images and their metadata to a Zarr particle store."""

import click

from hetrec_dist.cli.command_line import reproducible_command
from hetrec_dist.data.store import IMAGE_DTYPES


@click.command("convert")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(), help="The store to write (a folder, e.g. particles.zarr).")
@click.option("--datadir", type=click.Path(file_okay=False), help="Folder with the image stacks, if not beside INPUT.")
@click.option("--poses", type=click.Path(dir_okay=False), help="cryoDRGN poses.pkl (for .mrcs/.txt input).")
@click.option("--ctf", type=click.Path(dir_okay=False), help="cryoDRGN ctf.pkl (for .mrcs/.txt input).")
@click.option("--box", "-D", type=click.IntRange(min=8), help="Downsample to this box by Fourier cropping.")
@click.option("--apix", type=click.FloatRange(min=0, min_open=True), help="Pixel size (A) if the input lacks or misstates it.")
@click.option("--dtype", type=click.Choice(IMAGE_DTYPES), default="float32", show_default=True, help="Stored image precision.")
@click.option("--chunk-images", type=click.IntRange(min=1), help="Images per chunk (default: about 4 MiB a chunk).")
@click.option("--invert-contrast", is_flag=True, help="Negate the images (for data with dark particles).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(input_path, out, quiet, **options):
    """Convert INPUT to a chunked, compressed Zarr particle store.

    INPUT is a RELION particle .star file, a cryoSPARC particle .cs file, or an .mrcs stack (or a .txt list
    of stacks) with cryoDRGN --poses and --ctf pickles. A killed conversion resumes when the same command
    is run again. Under `mpiexec -n N` the ranks write disjoint chunks of one store.
    """
    from hetrec_dist.data.convert import ConvertOptions, convert

    result = convert(input_path, out, ConvertOptions(**options), command=reproducible_command(),
                     show_progress=not quiet)
    if not quiet and result is not None:
        rate = (result["n_particles"] - result["resumed_from"]) / max(result["seconds"], 1e-9)
        click.echo(f"wrote {result['n_particles']} particles to {out} ({rate:.0f} images/s)", err=True)
